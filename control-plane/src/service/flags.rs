//! Fleet feature flags (SPEC §8): `flag set NAME=VALUE [--tenant …|--cell …|--percent N]` and the
//! kill switch `flag kill NAME`. A flag reaches workloads through the desired state of every cell
//! it may change: each tenant's flags there are its own, overlaid by the fleet flags aimed at it,
//! and a killed flag is `false` for everyone whatever else says. Changing a flag touches the
//! cells, so the generations move and long-polling agents wake at once.

use std::collections::BTreeMap;

use cellfleet_api::{CellName, FlagTarget, FlagView, SetFlagRequest, TenantId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Error, Registry, Result, not_found};
use crate::store::{self, Caller};

/// Whether a flag aimed at `target` applies to `tenant` on `cell`. Nothing named: everyone;
/// otherwise any of the named tenants, the tenants on the named cells, and a stable `percent`
/// of all tenants (by a hash of flag name and tenant, so raising the percentage only adds).
pub fn applies(name: &str, target: &FlagTarget, tenant: &TenantId, cell: &CellName) -> bool {
    if target.tenants.is_empty() && target.cells.is_empty() && target.percent.is_none() {
        return true;
    }
    target.tenants.contains(tenant)
        || target.cells.contains(cell)
        || target
            .percent
            .is_some_and(|p| bucket(name, tenant) < u32::from(p))
}

/// The tenant's bucket (0–99) for a flag.
pub fn bucket(name: &str, tenant: &TenantId) -> u32 {
    let digest = Sha256::digest(format!("{name}/{tenant}").as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 100
}

/// A tenant's flags: its own, overlaid by the fleet's aimed at it; killed ones `false`.
pub fn effective(
    own: &BTreeMap<String, Value>,
    fleet: &[FlagView],
    tenant: &TenantId,
    cell: &CellName,
) -> BTreeMap<String, Value> {
    let mut out = own.clone();
    for f in fleet {
        if f.killed {
            out.insert(f.name.clone(), Value::Bool(false));
        } else if applies(&f.name, &f.target, tenant, cell) {
            out.insert(f.name.clone(), f.value.clone());
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Registry {
    pub async fn flags(&self) -> Result<Vec<FlagView>> {
        let mut conn = self.store.read().await?;
        Ok(store::list_flags(&mut conn).await?)
    }

    /// Sets a fleet flag (clearing a kill of it).
    pub async fn set_flag(&self, caller: &Caller, req: &SetFlagRequest) -> Result<FlagView> {
        if !valid_name(&req.name) {
            return Err(Error::Invalid(format!(
                "name: {:?} is not a flag name (1–63 of [A-Za-z0-9._-])",
                req.name
            )));
        }
        if req.target.percent.is_some_and(|p| p > 100) {
            return Err(Error::Invalid("target.percent: at most 100".into()));
        }
        if store::canonical(&req.value).len() > 4096 {
            return Err(Error::Invalid("value: at most 4 KiB of JSON".into()));
        }
        let mut tx = self.store.begin(caller).await?;
        for t in &req.target.tenants {
            if store::get_tenant(tx.conn(), t).await?.is_none() {
                return Err(not_found("tenant", t));
            }
        }
        for c in &req.target.cells {
            if store::get_cell(tx.conn(), c).await?.is_none() {
                return Err(not_found("cell", c));
            }
        }
        let before = store::list_flags(tx.conn())
            .await?
            .into_iter()
            .find(|f| f.name == req.name);
        let flag = FlagView {
            name: req.name.clone(),
            value: req.value.clone(),
            target: req.target.clone(),
            killed: false,
            updated_at: tx.now,
        };
        store::put_flag(tx.conn(), &flag).await?;
        touch_all(&mut tx).await?;
        tx.audit(
            "flag.set",
            &format!("flag/{}", req.name),
            json!({ "value": req.value, "target": req.target, "before": before.map(|b| json!({ "value": b.value, "target": b.target, "killed": b.killed })) }),
        );
        self.commit(tx).await?;
        Ok(flag)
    }

    /// The kill switch: the flag is `false` for every tenant of every cell, at once.
    pub async fn kill_flag(&self, caller: &Caller, name: &str) -> Result<FlagView> {
        if !valid_name(name) {
            return Err(Error::Invalid(format!("{name:?} is not a flag name")));
        }
        let mut tx = self.store.begin(caller).await?;
        let flag = match store::list_flags(tx.conn())
            .await?
            .into_iter()
            .find(|f| f.name == name)
        {
            Some(f) => FlagView {
                killed: true,
                updated_at: tx.now,
                ..f
            },
            // Killing a flag only tenants' own specs set is allowed: the kill wins over them.
            None => FlagView {
                name: name.to_owned(),
                value: Value::Bool(false),
                target: FlagTarget::default(),
                killed: true,
                updated_at: tx.now,
            },
        };
        store::put_flag(tx.conn(), &flag).await?;
        touch_all(&mut tx).await?;
        tx.audit("flag.kill", &format!("flag/{name}"), json!({}));
        self.commit(tx).await?;
        Ok(flag)
    }
}

async fn touch_all(tx: &mut store::Tx) -> Result<()> {
    for cell in store::cell_names(tx.conn()).await? {
        tx.touch(&cell);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn view(name: &str, value: Value, target: FlagTarget, killed: bool) -> FlagView {
        FlagView {
            name: name.into(),
            value,
            target,
            killed,
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn targets_percentages_and_kills() {
        let acme: TenantId = "acme".parse().unwrap();
        let globex: TenantId = "globex".parse().unwrap();
        let c1: CellName = "c1".parse().unwrap();
        let c2: CellName = "c2".parse().unwrap();
        let own: BTreeMap<String, Value> = [("beta".to_owned(), json!(true))].into();
        let fleet = vec![
            view("everyone", json!("v2"), FlagTarget::default(), false),
            view(
                "acme-only",
                json!(1),
                FlagTarget {
                    tenants: vec![acme.clone()],
                    ..Default::default()
                },
                false,
            ),
            view(
                "on-c2",
                json!(true),
                FlagTarget {
                    cells: vec![c2.clone()],
                    ..Default::default()
                },
                false,
            ),
            view("beta", json!(true), FlagTarget::default(), true),
        ];
        let a = effective(&own, &fleet, &acme, &c1);
        assert_eq!(a["everyone"], json!("v2"));
        assert_eq!(a["acme-only"], json!(1));
        assert!(!a.contains_key("on-c2"));
        assert_eq!(
            a["beta"],
            json!(false),
            "a kill wins over the tenant's own value"
        );
        let g = effective(&BTreeMap::new(), &fleet, &globex, &c2);
        assert!(!g.contains_key("acme-only"));
        assert_eq!(g["on-c2"], json!(true));
        // Percentages are stable and grow by adding tenants only.
        let tenants: Vec<TenantId> = (0..1000)
            .map(|i| format!("t{i}").parse().unwrap())
            .collect();
        let at = |p: u8| -> Vec<&TenantId> {
            let t = FlagTarget {
                percent: Some(p),
                ..Default::default()
            };
            tenants
                .iter()
                .filter(|x| applies("f", &t, x, &c1))
                .collect()
        };
        let (ten, fifty) = (at(10), at(50));
        assert!((60..=140).contains(&ten.len()), "{}", ten.len());
        assert!(ten.iter().all(|t| fifty.contains(t)));
        assert_eq!(at(0).len(), 0);
        assert_eq!(at(100).len(), 1000);
    }
}
