//! The one S3 client builder: credentials, region, endpoint and addressing from [`S3Params`], an
//! HTTP client that trusts `tls-ca-chain` and honours Juju's and the standard proxy variables,
//! retries with back-off; and the one place an SDK error becomes a [`StoreError`] that says what to
//! fix.

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, HttpClient, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    RuntimeComponents, SharedHttpClient,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_http_client::Connector;
use aws_smithy_runtime_api::client::http::{HttpConnectorSettings, SharedHttpConnector};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::params::{S3Params, UriStyle};
use crate::store::StoreError;

/// Attempts per request (the first one included) before a transient error is reported.
const MAX_ATTEMPTS: u32 = 5;

pub(super) fn build(params: &S3Params) -> Result<Client, StoreError> {
    let http = HttpsClient::new(params)?;
    let credentials = params
        .secret_key
        .expose(|secret| Credentials::new(&params.access_key, secret, None, None, "synapse-backup"));
    let mut config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(credentials)
        .region(params.region.clone().map(Region::new))
        .force_path_style(params.uri_style == UriStyle::Path)
        .http_client(SharedHttpClient::new(http))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(500))
                .with_max_backoff(Duration::from_secs(10)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(120))
                .build(),
        )
        // CRC trailers are new to S3 and many S3-compatible servers refuse them: checksum only
        // where the API requires it (SigV4 still covers every payload)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(endpoint) = &params.endpoint {
        config = config.endpoint_url(endpoint);
    }
    Ok(Client::from_conf(config.build()))
}

/// Connect and read timeouts: what a connector is built for.
type TimeoutKey = (Option<Duration>, Option<Duration>);

/// rustls (ring) with our trust store and proxy, one connector per timeout setting, cached.
#[derive(Debug)]
struct HttpsClient {
    tls: TlsContext,
    proxy: ProxyConfig,
    connectors: Mutex<Vec<(TimeoutKey, SharedHttpConnector)>>,
}

impl HttpsClient {
    fn new(params: &S3Params) -> Result<Self, StoreError> {
        let mut trust = TrustStore::default();
        for pem in &params.tls_ca_chain {
            trust.add_pem_certificate(pem.as_bytes());
        }
        let tls = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| StoreError::InvalidConfig(format!("tls-ca-chain cannot be used: {e}")))?;
        let proxy = proxy_config(params.is_https(), |k| std::env::var(k).ok())?;
        Ok(HttpsClient {
            tls,
            proxy,
            connectors: Mutex::new(Vec::new()),
        })
    }
}

impl HttpClient for HttpsClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        let key: TimeoutKey = (settings.connect_timeout(), settings.read_timeout());
        let mut cache = self.connectors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = cache.iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let mut builder = Connector::builder()
            .connector_settings(settings.clone())
            .proxy_config(self.proxy.clone());
        if let Some(sleep) = components.sleep_impl() {
            builder = builder.sleep_impl(sleep);
        }
        let connector = SharedHttpConnector::new(
            builder
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .tls_context(self.tls.clone())
                .build(),
        );
        cache.push((key, connector.clone()));
        connector
    }
}

/// Juju's model proxy settings first (`JUJU_CHARM_*`), then the standard variables.
pub(super) fn proxy_config(https: bool, env: impl Fn(&str) -> Option<String>) -> Result<ProxyConfig, StoreError> {
    let first = |names: &[&'static str]| {
        names.iter().find_map(|n| {
            env(n)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (*n, v.trim().to_string()))
        })
    };
    let proxy = if https {
        first(&[
            "JUJU_CHARM_HTTPS_PROXY",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ])
    } else {
        first(&[
            "JUJU_CHARM_HTTP_PROXY",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ])
    };
    let Some((name, url)) = proxy else {
        return Ok(ProxyConfig::disabled());
    };
    let url = if url.contains("://") {
        url
    } else {
        format!("http://{url}")
    };
    // the value is not quoted: a proxy URL may carry a password
    let config =
        ProxyConfig::all(url.as_str()).map_err(|_| StoreError::InvalidConfig(format!("{name} is not a proxy URL")))?;
    Ok(match first(&["JUJU_CHARM_NO_PROXY", "NO_PROXY", "no_proxy"]) {
        Some((_, rules)) => config.no_proxy(rules),
        None => config,
    })
}

/// What the request was about, for the error sentence.
#[derive(Clone, Copy)]
pub(super) struct Context<'a> {
    pub what: &'a str,
    pub bucket: &'a str,
    pub endpoint: &'a str,
}

/// An SDK error as the sentence a user reads, classified so callers can tell a missing bucket, a
/// credentials problem and an unreachable endpoint apart.
pub(super) fn store_error<E>(cx: Context<'_>, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let Context { what, bucket, endpoint } = cx;
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            let detail = causes(&err);
            if detail.contains("certificate") {
                StoreError::Unreachable(format!(
                    "{what}: {endpoint}'s TLS certificate is not trusted (give its CA in tls-ca-chain): {detail}"
                ))
            } else {
                StoreError::Unreachable(format!(
                    "{what}: {endpoint} did not answer after {MAX_ATTEMPTS} attempts (check the endpoint, \
                     s3-uri-style, the proxy settings and that the server is up): {detail}"
                ))
            }
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            match (code, status) {
                ("NoSuchBucket", _) => StoreError::BucketMissing(bucket.to_string()),
                ("InvalidAccessKeyId", _) => StoreError::AccessDenied(format!(
                    "{what}: the server does not know this access key (check access-key)"
                )),
                ("SignatureDoesNotMatch", _) => StoreError::AccessDenied(format!(
                    "{what}: the request signature does not match (check secret-key)"
                )),
                ("AccessDenied" | "AllAccessDisabled", _) | (_, 403) => StoreError::AccessDenied(format!(
                    "{what}: the credentials are wrong or do not allow this on bucket {bucket} (check \
                     access-key, secret-key and the bucket's policy)"
                )),
                ("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException", _)
                | (_, 301) => StoreError::InvalidConfig(format!(
                    "{what}: bucket {bucket} is in another region or needs another endpoint (check region and \
                     endpoint)"
                )),
                _ => {
                    let message = service.err().message().map(|m| format!(": {m}")).unwrap_or_default();
                    let code = if code.is_empty() { "no error code" } else { code };
                    StoreError::Other(format!("{what}: the server answered {status} ({code}{message})"))
                }
            }
        }
        SdkError::ResponseError(_) => StoreError::Other(format!(
            "{what}: {endpoint} gave an answer that is not S3's (is it an S3 endpoint?): {}",
            causes(&err)
        )),
        _ => StoreError::Other(format!("{what}: {}", causes(&err))),
    }
}

/// An error and its sources as one line, each cause once (the SDK's own rendering dumps whole
/// responses).
pub(super) fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The HTTP status of a service error (404 for a missing object on HEAD, which has no error code).
pub(super) fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(https: bool, vars: &[(&str, &str)]) -> String {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        format!("{:?}", proxy_config(https, |k| vars.get(k).cloned()).unwrap())
    }

    #[test]
    fn juju_proxy_settings_come_first() {
        let vars = [
            ("JUJU_CHARM_HTTPS_PROXY", "http://juju-proxy:3128"),
            ("HTTPS_PROXY", "http://other:3128"),
            ("JUJU_CHARM_NO_PROXY", "10.0.0.0/8"),
        ];
        let https = resolve(true, &vars);
        assert!(https.contains("juju-proxy") && https.contains("10.0.0.0/8"), "{https}");
        assert!(resolve(false, &vars).contains("Disabled"));
        assert!(resolve(false, &[("http_proxy", "proxy:8080")]).contains("proxy:8080"));
        assert!(resolve(true, &[]).contains("Disabled"));
    }

    #[test]
    fn a_bad_proxy_is_named_not_quoted() {
        let e = proxy_config(true, |k| (k == "HTTPS_PROXY").then(|| "http://user:pw@[::".to_string())).unwrap_err();
        assert!(
            e.to_string().contains("HTTPS_PROXY") && !e.to_string().contains("pw"),
            "{e}"
        );
    }
}
