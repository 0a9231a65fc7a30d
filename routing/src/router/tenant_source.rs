//! Where a proxied request names its tenant: a header, the first label of the host, or the first
//! segment of the path. Pure functions over the request's headers and path, so every source is
//! tested without a server.

use std::str::FromStr;

use axum::http::{HeaderMap, HeaderName, header};

/// The header nginx's `auth_request` location passes the original request URI in (the
/// subrequest's own URI is the auth endpoint's).
pub const ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
/// The header a proxy passes the original host in (nginx's subrequest and Envoy's check request
/// may carry their own `Host`).
pub const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How the proxy modes find the tenant of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// A request header (default `X-Tenant-Id`).
    Header(HeaderName),
    /// The first label of the host: `acme.example.com` → `acme`.
    HostPrefix,
    /// The first segment of the path: `/acme/notes` → `acme`.
    PathPrefix,
}

impl Default for TenantSource {
    fn default() -> Self {
        TenantSource::Header(HeaderName::from_static("x-tenant-id"))
    }
}

impl FromStr for TenantSource {
    type Err = String;

    /// `header` (= `header:X-Tenant-Id`), `header:NAME`, `host-prefix` or `path-prefix`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "header" => Ok(TenantSource::default()),
            None if s == "host-prefix" => Ok(TenantSource::HostPrefix),
            None if s == "path-prefix" => Ok(TenantSource::PathPrefix),
            Some(("header", name)) => HeaderName::from_str(name.trim())
                .map(TenantSource::Header)
                .map_err(|_| format!("{name:?} is not a valid header name")),
            _ => Err(format!(
                "unknown tenant source {s:?}: use header[:NAME], host-prefix or path-prefix"
            )),
        }
    }
}

impl std::fmt::Display for TenantSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TenantSource::Header(name) => write!(f, "header:{name}"),
            TenantSource::HostPrefix => f.write_str("host-prefix"),
            TenantSource::PathPrefix => f.write_str("path-prefix"),
        }
    }
}

impl TenantSource {
    /// The tenant named by a request with these headers and this original path (`None`: the
    /// request names none). Nothing is allocated; the answer borrows from the request.
    pub fn tenant<'a>(&self, headers: &'a HeaderMap, path: Option<&'a str>) -> Option<&'a str> {
        let found = match self {
            TenantSource::Header(name) => headers.get(name)?.to_str().ok()?.trim(),
            TenantSource::HostPrefix => {
                let host = headers
                    .get(FORWARDED_HOST)
                    .or_else(|| headers.get(header::HOST))?
                    .to_str()
                    .ok()?;
                let (label, rest) = host.split_once('.')?;
                // A bare host or an IP address names no tenant.
                if rest.is_empty() || label.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                label
            }
            TenantSource::PathPrefix => path?.strip_prefix('/')?.split(['/', '?', '#']).next()?,
        };
        (!found.is_empty()).then_some(found)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_str(k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn sources_parse_and_print() {
        assert_eq!("header".parse(), Ok(TenantSource::default()));
        assert_eq!(
            "header:X-Org".parse::<TenantSource>().unwrap().to_string(),
            "header:x-org"
        );
        assert_eq!("host-prefix".parse(), Ok(TenantSource::HostPrefix));
        assert_eq!("path-prefix".parse(), Ok(TenantSource::PathPrefix));
        assert!("cookie".parse::<TenantSource>().is_err());
        assert!("header:bad name".parse::<TenantSource>().is_err());
    }

    #[test]
    fn each_source_finds_the_tenant_or_none() {
        let h = headers(&[
            ("x-tenant-id", " acme "),
            ("host", "globex.example.com"),
            ("x-org", ""),
        ]);
        assert_eq!(TenantSource::default().tenant(&h, None), Some("acme"));
        let org: TenantSource = "header:x-org".parse().unwrap();
        assert_eq!(org.tenant(&h, None), None, "an empty header names nobody");
        assert_eq!(TenantSource::HostPrefix.tenant(&h, None), Some("globex"));
        let forwarded = headers(&[("host", "router:80"), ("x-forwarded-host", "initech.a.b")]);
        assert_eq!(
            TenantSource::HostPrefix.tenant(&forwarded, None),
            Some("initech"),
            "the forwarded host wins over the subrequest's own"
        );
        for bare in ["localhost", "127.0.0.1:8080", "example."] {
            assert_eq!(
                TenantSource::HostPrefix.tenant(&headers(&[("host", bare)]), None),
                None,
                "{bare}"
            );
        }
        let p = TenantSource::PathPrefix;
        assert_eq!(p.tenant(&h, Some("/acme/notes?x=1")), Some("acme"));
        assert_eq!(p.tenant(&h, Some("/acme?x=1")), Some("acme"));
        assert_eq!(p.tenant(&h, Some("/")), None);
        assert_eq!(p.tenant(&h, Some("relative")), None);
        assert_eq!(p.tenant(&h, None), None);
    }
}
