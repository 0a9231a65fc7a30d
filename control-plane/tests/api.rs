//! The HTTP API through `app(state).oneshot(..)`: the whole role matrix, authentication, body
//! limits, error shapes, correlation ids, metrics and the checked-in OpenAPI document.

// A panic in a test or benchmark is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cellfleet::http::{AppState, app};
use cellfleet_api::{CellName, CreateTokenRequest, Role};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::*;
use tower::ServiceExt;

struct Api {
    t: TestRegistry,
    state: AppState,
}

impl Api {
    async fn new(backend: cellfleet::store::Backend) -> Api {
        let t = TestRegistry::with_settings(backend, retention(0)).await;
        t.apply(FLEET).await.unwrap();
        t.apply(&format!(
            "{}{}",
            tenant_doc("acme", "mt-standard", "{jurisdiction: eu}"),
            tenant_doc("globex", "mt-standard", "{jurisdiction: us}")
        ))
        .await
        .unwrap();
        let state = AppState::new(t.registry.clone());
        Api { t, state }
    }

    async fn token(&self, role: Role) -> String {
        let cell = (role == Role::Agent).then(|| CellName::new("euw1-pool-1").unwrap());
        self.t
            .registry
            .create_token(
                &caller(),
                &CreateTokenRequest {
                    role,
                    cell,
                    description: None,
                },
            )
            .await
            .unwrap()
            .token
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        self.call_raw(
            method,
            path,
            token,
            body.map(|b| b.to_string()).unwrap_or_default(),
            &[],
        )
        .await
    }

    async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: String,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app(self.state.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value, headers)
    }
}

fn manifest(kind_doc: &str) -> Value {
    json!({ "files": [{ "name": "m.yaml", "content": kind_doc }], "dryRun": true })
}

/// One request per route, and the roles that may make it — written out independently of the
/// implementation's matrix, so a handler that forgets to check (or checks the wrong action) fails.
fn routes() -> Vec<(&'static str, &'static str, Option<Value>, &'static [Role])> {
    use Role::*;
    const READERS: &[Role] = &[Admin, Sre, Operator, Viewer];
    const ROUTE_READERS: &[Role] = &[Admin, Sre, Operator, Viewer, Edge];
    let tenant = json!({ "id": "newco", "spec": { "displayName": "New", "profile": "mt-standard", "residency": { "jurisdiction": "us" } } });
    vec![
        ("GET", "/metrics", None, READERS),
        ("GET", "/openapi.json", None, READERS),
        ("GET", "/v1/regions", None, READERS),
        ("GET", "/v1/cells", None, READERS),
        ("GET", "/v1/cells/euw1-pool-1", None, READERS),
        ("GET", "/v1/cells/euw1-pool-1/desired", None, READERS),
        ("GET", "/v1/agent/desired?timeout=0s", None, &[Agent]),
        (
            "POST",
            "/v1/agent/report",
            Some(json!({"observedGeneration": 0})),
            &[Agent],
        ),
        ("GET", "/v1/tenants", None, READERS),
        ("GET", "/v1/tenants/acme", None, READERS),
        ("GET", "/v1/tenants/acme/explain", None, READERS),
        ("GET", "/v1/tenants/acme/context?env=prod", None, READERS),
        ("GET", "/v1/audit", None, READERS),
        ("GET", "/v1/audit/verify", None, READERS),
        (
            "POST",
            "/v1/audit/verify",
            Some(json!({"checkpoints": []})),
            READERS,
        ),
        ("GET", "/v1/audit/checkpoints", None, READERS),
        ("GET", "/v1/audit/key", None, READERS),
        ("POST", "/v1/audit/checkpoints", None, &[Admin]),
        (
            "POST",
            "/v1/apply",
            Some(manifest(
                "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {name: ap-1}\nspec: {jurisdiction: ap, location: {lat: 1, lon: 103}}\n",
            )),
            &[Admin, Sre],
        ),
        (
            "POST",
            "/v1/apply",
            Some(manifest(&tenant_doc(
                "viaapply",
                "mt-standard",
                "{jurisdiction: us}",
            ))),
            &[Admin, Operator],
        ),
        ("POST", "/v1/tenants", Some(tenant), &[Admin, Operator]),
        (
            "POST",
            "/v1/tenants/globex/suspend",
            Some(json!({"reason": "test"})),
            &[Admin, Operator],
        ),
        (
            "POST",
            "/v1/tenants/globex/resume",
            None,
            &[Admin, Operator],
        ),
        (
            "POST",
            "/v1/tenants/globex/archive",
            None,
            &[Admin, Operator],
        ),
        ("DELETE", "/v1/tenants/globex", None, &[Admin, Operator]),
        ("GET", "/v1/routes", None, ROUTE_READERS),
        ("GET", "/v1/routes/watch?timeout=0s", None, ROUTE_READERS),
        ("GET", "/v1/routes/acme?env=prod", None, ROUTE_READERS),
        ("GET", "/v1/releases", None, READERS),
        (
            "POST",
            "/v1/releases",
            Some(
                json!({"file": {"name": "r.yaml", "content": "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {name: \"1.0.0\"}\nspec: {artifact: {command: notes-workload}}\n"}}),
            ),
            &[Admin, Sre],
        ),
        (
            "POST",
            "/v1/releases/1.0.0/deploy",
            Some(json!({"cells": ["euw1-pool-1"]})),
            &[Admin, Sre],
        ),
        ("GET", "/v1/migrations", None, READERS),
        (
            "POST",
            "/v1/migrations",
            Some(
                json!({"files": [{"name": "V1__t.expand.sql", "content": "CREATE TABLE t (tenant_id TEXT);"}]}),
            ),
            &[Admin, Sre],
        ),
        ("GET", "/v1/tokens", None, &[Admin]),
        (
            "POST",
            "/v1/tokens",
            Some(json!({"role": "viewer"})),
            &[Admin],
        ),
        ("DELETE", "/v1/tokens/tok_unknown", None, &[Admin]),
        (
            "POST",
            "/v1/moves",
            Some(json!({"tenant": "acme", "to": "pooled", "dryRun": true})),
            &[Admin, Operator],
        ),
        ("GET", "/v1/moves", None, READERS),
        ("GET", "/v1/moves/mv_unknown", None, READERS),
        (
            "POST",
            "/v1/moves/mv_unknown/abort",
            None,
            &[Admin, Operator],
        ),
        (
            "POST",
            "/v1/moves/mv_unknown/rollback",
            None,
            &[Admin, Operator],
        ),
        ("GET", "/v1/routers", None, READERS),
        (
            "POST",
            "/v1/trains",
            Some(json!({"release": "1.0.0", "dryRun": true})),
            &[Admin, Sre],
        ),
        ("GET", "/v1/trains", None, READERS),
        ("GET", "/v1/trains/tr_unknown", None, READERS),
        ("POST", "/v1/trains/tr_unknown/promote", None, &[Admin, Sre]),
        ("POST", "/v1/trains/tr_unknown/pause", None, &[Admin, Sre]),
        ("POST", "/v1/trains/tr_unknown/resume", None, &[Admin, Sre]),
        (
            "POST",
            "/v1/trains/tr_unknown/abort",
            Some(json!({"rollback": true})),
            &[Admin, Sre],
        ),
        (
            "POST",
            "/v1/trains/tr_unknown/rollback",
            None,
            &[Admin, Sre],
        ),
        ("GET", "/v1/line", None, READERS),
        (
            "POST",
            "/v1/line/stop",
            Some(json!({"reason": "test"})),
            &[Admin, Sre],
        ),
        ("POST", "/v1/line/resume", None, &[Admin, Sre]),
        ("GET", "/v1/flags", None, READERS),
        (
            "POST",
            "/v1/flags",
            Some(json!({"name": "f", "value": true})),
            &[Admin, Sre],
        ),
        ("POST", "/v1/flags/f/kill", None, &[Admin, Sre]),
        ("GET", "/v1/runbooks", None, READERS),
        ("GET", "/v1/runbooks/cell-drain", None, READERS),
        (
            "POST",
            "/v1/runbooks/incident-comms/runs",
            Some(
                json!({"params": {"cells": "euw1-pool-1", "stage": "resolved", "summary": "ok"}, "dryRun": true}),
            ),
            &[Admin, Sre, Operator],
        ),
        (
            "POST",
            "/v1/runbooks/cell-drain/runs",
            Some(json!({"params": {"cell": "euw1-pool-1"}, "dryRun": true})),
            &[Admin, Sre],
        ),
        ("GET", "/v1/runbook-runs", None, READERS),
        ("GET", "/v1/runbook-runs/rb_unknown", None, READERS),
        (
            "POST",
            "/v1/runbook-runs/rb_unknown/approve",
            None,
            &[Admin, Sre, Operator],
        ),
        (
            "POST",
            "/v1/runbook-runs/rb_unknown/abort",
            Some(json!({"reason": "test"})),
            &[Admin, Sre, Operator],
        ),
        ("GET", "/v1/events", None, READERS),
        ("POST", "/v1/cells/use1-pool-1/drain", None, &[Admin, Sre]),
        ("POST", "/v1/cells/use1-pool-1/undrain", None, &[Admin, Sre]),
        ("POST", "/v1/cells/use1-pool-1/retire", None, &[Admin, Sre]),
        ("POST", "/v1/cells/use1-pool-1/resync", None, &[Admin, Sre]),
        ("GET", "/v1/agent/moves/mv_unknown/position", None, &[Agent]),
        ("GET", "/v1/agent/moves/mv_unknown/chunks", None, &[Agent]),
        (
            "POST",
            "/v1/agent/moves/mv_unknown/chunks",
            Some(json!({"seq": 1, "kind": "end", "items": [], "cursor": null, "changeSeq": 0})),
            &[Agent],
        ),
        (
            "POST",
            "/v1/agent/moves/mv_unknown/applied",
            Some(json!({"seq": 1})),
            &[Agent],
        ),
        (
            "POST",
            "/v1/agent/moves/mv_unknown/side",
            Some(json!({})),
            &[Agent],
        ),
    ]
}

both_backends!(role_matrix_is_enforced_on_every_route, |backend| {
    let api = Api::new(backend).await;
    for (method, path, body, allowed) in routes() {
        for role in Role::ALL {
            let token = api.token(*role).await;
            let (status, value, _) = api.call(method, path, Some(&token), body.clone()).await;
            if allowed.contains(role) {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{role} should be allowed {method} {path}, got {status}: {value}"
                );
                assert!(
                    !status.is_server_error(),
                    "{method} {path} as {role}: {status} {value}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role} must be refused {method} {path}: {value}"
                );
                assert_eq!(value["code"], "forbidden");
            }
        }
        // Without a token, or with a wrong one: 401 everywhere.
        let (status, value, headers) = api.call(method, path, None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {value}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        let (status, _, _) = api
            .call(method, path, Some("cft_not-a-real-token"), body.clone())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    // Health needs no token.
    let (status, _, _) = api.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
});

both_backends!(an_agent_token_acts_only_for_its_own_cell, |backend| {
    let api = Api::new(backend).await;
    let agent = api.token(Role::Agent).await; // bound to euw1-pool-1
    let (status, v, _) = api
        .call("GET", "/v1/agent/desired?timeout=0s", Some(&agent), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["cell"], "euw1-pool-1");
    assert!(v["generation"].as_i64().unwrap() >= 1);
    let (status, v, _) = api
        .call(
            "GET",
            "/v1/agent/desired?timeout=0s&cell=use1-pool-1",
            Some(&agent),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        v["message"],
        "the agent token of cell euw1-pool-1 may not act for cell use1-pool-1"
    );
    let (status, _, _) = api
        .call(
            "POST",
            "/v1/agent/report?cell=use1-pool-1",
            Some(&agent),
            Some(json!({"observedGeneration": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v, _) = api
        .call(
            "POST",
            "/v1/agent/report",
            Some(&agent),
            Some(json!({"observedGeneration": -1})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
        "{v}"
    );
    let (status, _, _) = api
        .call(
            "POST",
            "/v1/agent/report",
            Some(&agent),
            Some(json!({"observedGeneration": 1, "release": "1.0.0"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Nothing else of the fleet is visible to it.
    for path in [
        "/v1/cells/use1-pool-1/desired",
        "/v1/tenants/acme/context",
        "/v1/cells",
    ] {
        let (status, _, _) = api.call("GET", path, Some(&agent), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let admin = api.token(Role::Admin).await;
    let (_, v, _) = api
        .call("GET", "/v1/cells/euw1-pool-1", Some(&admin), None)
        .await;
    assert_eq!(v["release"], "1.0.0");
    assert_eq!(v["observedGeneration"], 1);
});

both_backends!(
    a_long_poll_of_a_token_revoked_meanwhile_gets_nothing,
    |backend| {
        let api = std::sync::Arc::new(Api::new(backend).await);
        let admin = api.token(Role::Admin).await;
        let agent = api.token(Role::Agent).await;
        let (_, d, _) = api
            .call("GET", "/v1/agent/desired", Some(&agent), None)
            .await;
        let since = d["generation"].as_i64().unwrap();
        let waiting = {
            let api = api.clone();
            let agent = agent.clone();
            tokio::spawn(async move {
                api.call(
                    "GET",
                    &format!("/v1/agent/desired?since={since}&timeout=30s"),
                    Some(&agent),
                    None,
                )
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (_, tokens, _) = api.call("GET", "/v1/tokens", Some(&admin), None).await;
        let id = tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["role"] == "agent")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, _, _) = api
            .call("DELETE", &format!("/v1/tokens/{id}"), Some(&admin), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        // A change to the agent's cell (a tenant placed there) wakes the poll: it must not
        // deliver it.
        let started = std::time::Instant::now();
        let tenant = json!({ "id": "newco", "spec": { "displayName": "New", "profile": "mt-standard",
        "residency": { "allowedRegions": ["eu-west-1"] } } });
        let (status, v, _) = api
            .call("POST", "/v1/tenants", Some(&admin), Some(tenant))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(v["placements"][0]["cell"], "euw1-pool-1");
        let (status, v, _) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
        assert!(v.get("tenants").is_none());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the poll was woken by the change (and refused), not timed out"
        );
    }
);

both_backends!(errors_have_a_code_and_a_message, |backend| {
    let api = Api::new(backend).await;
    let admin = api.token(Role::Admin).await;
    let (status, v, _) = api
        .call("GET", "/v1/tenants/nope", Some(&admin), None)
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert_eq!(v["message"], "tenant nope not found");
    let (status, v, _) = api
        .call("GET", "/v1/tenants/Not_An_Id", Some(&admin), None)
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, v, _) = api
        .call("POST", "/v1/tenants/acme/resume", Some(&admin), None)
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (status, v, _) = api
        .call_raw("POST", "/v1/apply", Some(&admin), "{not json".into(), &[])
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{v}"
    );
    let bad = manifest(
        "apiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {name: c}\nspec: {region: eu-west-1, kind: pooled, env: prod, capacity: 0}\n",
    );
    let (status, v, _) = api.call("POST", "/v1/apply", Some(&admin), Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["code"], "invalid_manifest");
    assert_eq!(
        v["details"],
        json!({"file": "m.yaml", "document": 1, "path": "spec.capacity"})
    );
    let (status, v, _) = api
        .call("GET", "/v1/tenants?state=sleeping", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _, _) = api
        .call("GET", "/v1/nothing-here", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
});

both_backends!(
    oversized_bodies_are_refused_and_nothing_is_written,
    |backend| {
        let mut api = Api::new(backend).await;
        api.state.max_body_bytes = 4096;
        let admin = api.token(Role::Admin).await;
        let records = api.t.registry.verify_audit(&[]).await.unwrap().records;
        let huge = format!(
            "# {}\n{}",
            "x".repeat(8000),
            tenant_doc("big", "mt-standard", "{jurisdiction: us}")
        );
        let (status, v, _) = api
            .call("POST", "/v1/apply", Some(&admin), Some(manifest(&huge)))
            .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
        assert_eq!(v["code"], "payload_too_large");
        assert_eq!(
            api.t.registry.verify_audit(&[]).await.unwrap().records,
            records
        );
    }
);

both_backends!(correlation_ids_flow_into_the_audit_log, |backend| {
    let api = Api::new(backend).await;
    let operator = api.token(Role::Operator).await;
    let (status, _, headers) = api
        .call_raw(
            "POST",
            "/v1/tenants/acme/suspend",
            Some(&operator),
            String::new(),
            &[("x-correlation-id", "ticket-4711")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-correlation-id"], "ticket-4711");
    let records = api.t.registry.audit(Some("tenant/acme"), 10).await.unwrap();
    let last = records.last().unwrap();
    assert_eq!(last.action, "tenant.suspend");
    assert_eq!(last.correlation_id, "ticket-4711");
    assert!(
        last.actor.starts_with("token:tok_") && last.actor.ends_with("(operator)"),
        "{}",
        last.actor
    );
    // A generated one when the caller sends none (or an unusable one).
    let (_, _, headers) = api
        .call_raw(
            "GET",
            "/v1/regions",
            Some(&operator),
            String::new(),
            &[("x-correlation-id", "bad id with spaces")],
        )
        .await;
    assert_eq!(headers["x-correlation-id"].len(), 36);
});

both_backends!(metrics_and_health, |backend| {
    let api = Api::new(backend).await;
    let viewer = api.token(Role::Viewer).await;
    api.call("GET", "/v1/tenants", Some(&viewer), None).await;
    let (status, body, _) = api.call("GET", "/metrics", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap();
    assert!(
        text.contains(
            r#"cellfleet_http_requests_total{method="GET",route="/v1/tenants",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"cellfleet_tenants{state="active"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cellfleet_cells{state="ready"} 4"#),
        "{text}"
    );
});

/// `openapi.json` in the repository is what the server serves; regenerate with
/// `UPDATE_OPENAPI=1 cargo test -p cellfleet --test api`.
#[tokio::test]
async fn checked_in_openapi_matches_the_code() {
    use utoipa::OpenApi;
    let generated =
        serde_json::to_string_pretty(&cellfleet::http::ApiDoc::openapi()).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "control-plane/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test -p cellfleet --test api"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    for (_, route_path, _, _) in routes() {
        let p = route_path.split('?').next().unwrap();
        let templated = p
            .replace("/1.0.0", "/{version}")
            .replace("/routes/acme", "/routes/{tenant}")
            .replace("/acme", "/{id}")
            .replace("/globex", "/{id}")
            .replace("/euw1-pool-1", "/{name}")
            .replace("/tok_unknown", "/{id}")
            .replace("/mv_unknown", "/{id}")
            .replace("/tr_unknown", "/{id}")
            .replace("/flags/f/", "/flags/{name}/")
            .replace("/use1-pool-1", "/{name}")
            .replace("/rb_unknown", "/{id}")
            .replace("/runbooks/cell-drain", "/runbooks/{name}")
            .replace("/runbooks/incident-comms", "/runbooks/{name}");
        assert!(
            doc["paths"].get(&templated).is_some(),
            "{templated} is not documented"
        );
    }
}
