//! The tenant context (SPEC §5): one document every platform module reads to know where a
//! tenant's resources are. Pure: built from the tenant, its placement and its cell.
//!
//! Only the isolation mapping differs between profiles: pooled tenants share the cell's database
//! (scoped by `tenant_id` under row-level security), bucket (by prefix) and queue (by partition
//! key); dedicated tenants own them.

use std::collections::BTreeMap;

use cellfleet_api::{
    CellName, DatabaseIsolation, Env, Generation, Isolation, NetworkIsolation,
    ObjectStoreIsolation, Profile, QueueIsolation, RegionName, SecretsIsolation, Sharing,
    TenantContext, TenantId, TenantSpec, TenantState,
};

/// The isolation mapping for a tenant on `cell` with `profile`.
pub fn isolation(tenant: &TenantId, profile: Profile, cell: &CellName) -> Isolation {
    let t = tenant.as_str();
    let c = cell.as_str();
    match profile {
        Profile::MtStandard => Isolation {
            database: DatabaseIsolation {
                sharing: Sharing::Shared,
                database: format!("{c}-db"),
                schema: "app".to_owned(),
                row_scope: Some(t.to_owned()),
            },
            object_store: ObjectStoreIsolation {
                sharing: Sharing::Shared,
                bucket: format!("{c}-data"),
                prefix: format!("tenants/{t}/"),
            },
            queue: QueueIsolation {
                sharing: Sharing::Shared,
                queue: "jobs".to_owned(),
                partition_key: Some(t.to_owned()),
            },
            secrets: SecretsIsolation {
                path: format!("secrets/{t}/*"),
                key: format!("kms/{c}/tenants/{t}"),
            },
            network: NetworkIsolation {
                sharing: Sharing::Shared,
                network: format!("{c}-net"),
                account: "provider".to_owned(),
            },
        },
        Profile::StDedicated | Profile::StByoc => Isolation {
            database: DatabaseIsolation {
                sharing: Sharing::Dedicated,
                database: t.to_owned(),
                schema: "app".to_owned(),
                row_scope: None,
            },
            object_store: ObjectStoreIsolation {
                sharing: Sharing::Dedicated,
                bucket: format!("{c}-data"),
                prefix: String::new(),
            },
            queue: QueueIsolation {
                sharing: Sharing::Dedicated,
                queue: format!("jobs-{t}"),
                partition_key: None,
            },
            secrets: SecretsIsolation {
                path: format!("secrets/{t}/*"),
                key: format!("kms/{c}"),
            },
            network: NetworkIsolation {
                sharing: Sharing::Dedicated,
                network: format!("{c}-net"),
                account: if profile == Profile::StByoc {
                    "customer"
                } else {
                    "provider"
                }
                .to_owned(),
            },
        },
    }
}

/// Everything the context is built from.
#[derive(Debug, Clone, Copy)]
pub struct ContextInputs<'a> {
    pub tenant: &'a TenantId,
    pub state: TenantState,
    pub spec: &'a TenantSpec,
    pub env: &'a Env,
    pub cell: &'a CellName,
    pub region: &'a RegionName,
    pub generation: Generation,
}

pub fn tenant_context(i: ContextInputs<'_>) -> TenantContext {
    let tags = BTreeMap::from([
        ("tenant".to_owned(), i.tenant.to_string()),
        ("env".to_owned(), i.env.to_string()),
        ("cell".to_owned(), i.cell.to_string()),
        ("region".to_owned(), i.region.to_string()),
    ]);
    TenantContext {
        tenant: i.tenant.clone(),
        display_name: i.spec.display_name.clone(),
        env: i.env.clone(),
        cell: i.cell.clone(),
        region: i.region.clone(),
        profile: i.spec.profile,
        state: i.state,
        generation: i.generation,
        isolation: isolation(i.tenant, i.spec.profile, i.cell),
        quotas: i.spec.quotas.clone(),
        flags: i.spec.flags.clone(),
        slo: i.spec.slo.clone(),
        tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_and_dedicated_naming_follow_the_spec_table() {
        let t = TenantId::new("acme").unwrap();
        let pooled = isolation(
            &t,
            Profile::MtStandard,
            &CellName::new("euw1-pool-1").unwrap(),
        );
        assert_eq!(pooled.database.sharing, Sharing::Shared);
        assert_eq!(pooled.database.row_scope.as_deref(), Some("acme"));
        assert_eq!(pooled.object_store.prefix, "tenants/acme/");
        assert_eq!(pooled.queue.queue, "jobs");
        assert_eq!(pooled.queue.partition_key.as_deref(), Some("acme"));
        assert_eq!(pooled.secrets.path, "secrets/acme/*");

        let cell = CellName::new("euw1-ded-1").unwrap();
        let dedicated = isolation(&t, Profile::StDedicated, &cell);
        assert_eq!(dedicated.database.database, "acme");
        assert_eq!(dedicated.database.row_scope, None);
        assert_eq!(dedicated.object_store.bucket, "euw1-ded-1-data");
        assert_eq!(dedicated.queue.queue, "jobs-acme");
        assert_eq!(dedicated.secrets.key, "kms/euw1-ded-1");
        assert_eq!(dedicated.network.account, "provider");
        assert_eq!(
            isolation(&t, Profile::StByoc, &cell).network.account,
            "customer"
        );
    }
}
