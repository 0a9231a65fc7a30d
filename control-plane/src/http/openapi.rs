//! What the OpenAPI document says about every operation at once, so that it cannot drift from
//! what the shared plumbing does: the bearer scheme, the error answers of the extractors and the
//! role check (`401`, `403`, `400`, `413`, `404`), and operation ids that are unique across tags.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// Adds the `bearer` security scheme every protected operation names.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Documents the answers every operation can give through the shared plumbing, each with the
/// `ErrorBody` schema, where the operation's own annotation did not already:
/// - `401` on every protected operation (no token, an unknown or revoked one),
/// - `403` on every protected operation (the role matrix, or an agent acting for another cell),
/// - `400` where there are parameters or a body (a value that does not parse),
/// - `422` there too (it parsed, and a rule refused it),
/// - `413` where there is a body (over the server's `--max-body-bytes`),
/// - `404` where there are path parameters (nothing by that name),
/// - `503` on every protected operation (the registry is busy: retry after `Retry-After`).
///
/// It also makes operation ids unique: `TAG_NAME` (the handler names repeat across tags).
pub struct SharedAnswers;

impl utoipa::Modify for SharedAnswers {
    fn modify(&self, openapi: &mut OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                document_shared_answers(op);
                if let (Some(tag), Some(id)) = (
                    op.tags.as_ref().and_then(|t| t.first()),
                    op.operation_id.as_mut(),
                ) && !id.starts_with(&format!("{tag}_"))
                {
                    *id = format!("{tag}_{id}");
                }
            }
        }
    }
}

fn document_shared_answers(op: &mut Operation) {
    let protected = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_path = params
        .iter()
        .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Path));
    let has_params = !params.is_empty();
    let has_body = op.request_body.is_some();
    let mut add = |status: &str, why: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(why));
    };
    if protected {
        add("401", "No bearer token, or an unknown or revoked one");
        add("403", "The token's role may not do this");
        add(
            "503",
            "The registry is busy: retry after `Retry-After` seconds",
        );
    }
    if has_params || has_body {
        add(
            "400",
            "A parameter or the body does not parse (the message names it)",
        );
        add(
            "422",
            "It parses, but a rule refused it: one the schema states, or one it cannot (a \
             cross-field rule, a runbook's own parameters, a manifest inside the body); the \
             message names it",
        );
    }
    if has_body {
        add("413", "The body is over the server's limit");
    }
    if has_path {
        add("404", "Nothing by that name");
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .into()
}
