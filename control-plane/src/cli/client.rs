//! The operator CLI's HTTP client: bearer auth, correlation ids, and API errors turned into
//! one-line reasons.

use anyhow::{Context, anyhow};
use cellfleet_api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// An API error as the CLI reports it.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code}, HTTP {status})")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Client> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("cellfleet-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(Method::GET, path, &[], None::<&()>).await
    }

    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send(Method::GET, path, query, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(Method::DELETE, path, &[], None::<&()>).await
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let token = self.token.as_deref().ok_or_else(|| {
            anyhow!("no API token: pass --token, set CELLFLEET_TOKEN, or point --token-file / CELLFLEET_TOKEN_FILE at a token file")
        })?;
        let mut req = self
            .http
            .request(method, &url)
            .query(query)
            .bearer_auth(token)
            .header("x-correlation-id", uuid::Uuid::new_v4().to_string());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the control plane at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        for warning in resp.headers().get_all(reqwest::header::WARNING) {
            if let Ok(w) = warning.to_str() {
                eprintln!("warning: {}", warning_text(w));
            }
        }
        let bytes = resp.bytes().await.context("reading the response")?;
        if !status.is_success() {
            return Err(failure(status, &bytes).into());
        }
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected response from {url}"))
    }
}

/// The text of a `Warning: 299 AGENT "TEXT"` header (the whole value if it has another shape).
fn warning_text(value: &str) -> &str {
    value
        .split_once('"')
        .and_then(|(_, rest)| rest.strip_suffix('"'))
        .unwrap_or(value)
}

fn failure(status: StatusCode, body: &[u8]) -> ApiFailure {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ApiFailure {
            status: status.as_u16(),
            code: e.code,
            message: e.message,
        },
        Err(_) => ApiFailure {
            status: status.as_u16(),
            code: "http_error".to_owned(),
            message: String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(300)
                .collect::<String>(),
        },
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// reqwest is built without a default TLS provider; use ring (small, no C toolchain beyond cc).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
