//! The one typed set of S3 settings, built from s3-integrator's relation databag (or the CLI's flags
//! turned into the same map) and validated once. Keys and encodings follow the `s3` interface:
//! values are strings, `""` means unset, unknown keys are ignored, lists may arrive as JSON. An error
//! names the bad key and never quotes a secret's value.

use std::collections::BTreeMap;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::secret::Secret;

/// Used when only an endpoint is given (Ceph RGW and MinIO accept any region; SigV4 needs one).
pub const DEFAULT_REGION: &str = "us-east-1";

/// How the bucket appears in a request's URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriStyle {
    /// `https://endpoint/bucket/key`
    Path,
    /// `https://bucket.endpoint/key` (virtual-hosted; the interface's default)
    Host,
}

/// The signature version the provider asked for. The SDK signs with version 4 only, which every
/// current S3 implementation accepts; a request for version 2 is noted, not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    V2,
    V4,
}

/// Everything needed to reach the bucket, from s3-integrator's databag or from CLI flags.
#[derive(Debug, Clone)]
pub struct S3Params {
    pub access_key: String,
    pub secret_key: Secret,
    pub bucket: String,
    /// `scheme://host[:port]`; `None` = AWS.
    pub endpoint: Option<String>,
    /// Always set after validation ([`DEFAULT_REGION`] when only an endpoint was given).
    pub region: Option<String>,
    /// Key prefix with surrounding '/' trimmed ("" = bucket root).
    pub path: String,
    pub uri_style: UriStyle,
    pub storage_class: Option<String>,
    /// PEM certificates to trust for an HTTPS endpoint (besides the system's).
    pub tls_ca_chain: Vec<String>,
    pub signature_version: Option<SignatureVersion>,
    /// Extra headers sent when a backup object is created (`name`, `value`).
    pub attributes: Vec<(String, String)>,
    pub delete_older_than_days: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("the S3 setting {0} is missing")]
    Missing(&'static str),
    #[error("the S3 setting {key} is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl S3ConfigError {
    /// The databag key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            S3ConfigError::Missing(key) | S3ConfigError::Invalid { key, .. } => key,
        }
    }

    fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        S3ConfigError::Invalid {
            key,
            reason: reason.into(),
        }
    }
}

/// Every key this module reads, for callers that build the map themselves.
pub const KEYS: [&str; 12] = [
    "access-key",
    "secret-key",
    "bucket",
    "endpoint",
    "region",
    "path",
    "s3-uri-style",
    "storage-class",
    "tls-ca-chain",
    "s3-api-version",
    "attributes",
    "delete-older-than-days",
];

impl S3Params {
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, S3ConfigError> {
        let get = |key: &str| map.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let required = |key: &'static str| get(key).ok_or(S3ConfigError::Missing(key));

        let access_key = required("access-key")?.to_string();
        // the secret is taken as given (only surrounding whitespace, which no key contains, is dropped)
        let secret_key = Secret::new(required("secret-key")?);
        let bucket = required("bucket")?.to_string();
        if bucket.contains('/') || bucket.chars().any(char::is_whitespace) {
            return Err(S3ConfigError::invalid(
                "bucket",
                format!("{bucket:?} is not a bucket name (no '/' or spaces)"),
            ));
        }
        let endpoint = get("endpoint").map(parse_endpoint).transpose()?;
        let region = get("region").map(str::to_string);
        if region.is_none() && endpoint.is_none() {
            return Err(S3ConfigError::invalid(
                "region",
                "neither region nor endpoint is set (one of them is required)",
            ));
        }
        let region = region.or_else(|| Some(DEFAULT_REGION.to_string()));
        let path = get("path").unwrap_or("").trim_matches('/').to_string();
        let uri_style = match get("s3-uri-style") {
            None => UriStyle::Host,
            Some(s) if s.eq_ignore_ascii_case("path") => UriStyle::Path,
            Some(s) if s.eq_ignore_ascii_case("host") || s.eq_ignore_ascii_case("virtual") => UriStyle::Host,
            Some(s) => {
                return Err(S3ConfigError::invalid(
                    "s3-uri-style",
                    format!("{s:?}: use path or host"),
                ))
            }
        };
        let storage_class = get("storage-class").map(str::to_string);
        let tls_ca_chain = get("tls-ca-chain").map(parse_ca_chain).transpose()?.unwrap_or_default();
        let signature_version = match get("s3-api-version") {
            None => None,
            Some("4" | "v4" | "s3v4") => Some(SignatureVersion::V4),
            Some("2" | "v2" | "s3v2") => Some(SignatureVersion::V2),
            Some(s) => return Err(S3ConfigError::invalid("s3-api-version", format!("{s:?}: use 2 or 4"))),
        };
        let attributes = get("attributes").map(parse_attributes).transpose()?.unwrap_or_default();
        let delete_older_than_days = match get("delete-older-than-days") {
            None => None,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=9_999_999).contains(&n) => Some(n),
                _ => {
                    return Err(S3ConfigError::invalid(
                        "delete-older-than-days",
                        format!("{s:?}: give a whole number of days from 1 to 9999999"),
                    ))
                }
            },
        };
        Ok(S3Params {
            access_key,
            secret_key,
            bucket,
            endpoint,
            region,
            path,
            uri_style,
            storage_class,
            tls_ca_chain,
            signature_version,
            attributes,
            delete_older_than_days,
        })
    }

    /// `s3://bucket/path`, for messages.
    pub fn location(&self) -> String {
        if self.path.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.path)
        }
    }

    /// Where a backup's object lives: `<path>/<id>`, or `<id>` at the bucket root (never a leading '/').
    pub fn key(&self, id: &str) -> String {
        if self.path.is_empty() {
            id.to_string()
        } else {
            format!("{}/{id}", self.path)
        }
    }

    /// What every backup key starts with (`<path>/`), `None` at the bucket root.
    pub fn prefix(&self) -> Option<String> {
        (!self.path.is_empty()).then(|| format!("{}/", self.path))
    }

    pub fn is_https(&self) -> bool {
        self.endpoint.as_deref().is_none_or(|e| e.starts_with("https://"))
    }
}

/// `scheme://host[:port][/…]`; a bare host means HTTPS.
fn parse_endpoint(s: &str) -> Result<String, S3ConfigError> {
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let (scheme, rest) = with_scheme.split_once("://").unwrap_or(("", ""));
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(S3ConfigError::invalid(
            "endpoint",
            format!("{s:?}: use http:// or https://"),
        ));
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.chars().any(char::is_whitespace) || host.contains('@') {
        return Err(S3ConfigError::invalid("endpoint", format!("{s:?} has no usable host")));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// A JSON list of PEM certificates, base64 of PEM (or of that JSON list), or PEM itself (a CLI file).
fn parse_ca_chain(s: &str) -> Result<Vec<String>, S3ConfigError> {
    const KEY: &str = "tls-ca-chain";
    let text = if s.starts_with('[') || s.starts_with("-----BEGIN") {
        s.to_string()
    } else {
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| S3ConfigError::invalid(KEY, "neither a JSON list of PEM certificates, nor PEM, nor base64"))?;
        String::from_utf8(bytes).map_err(|_| S3ConfigError::invalid(KEY, "the base64 does not hold PEM text"))?
    };
    let text = text.trim();
    let items: Vec<String> = if text.starts_with('[') {
        serde_json::from_str(text)
            .map_err(|e| S3ConfigError::invalid(KEY, format!("not a JSON list of PEM strings: {e}")))?
    } else {
        vec![text.to_string()]
    };
    // each item PEM, or base64 of PEM
    let pems = items
        .iter()
        .map(|item| {
            let item = item.trim();
            if item.starts_with("-----BEGIN") {
                return Ok(item.to_string());
            }
            let compact: String = item.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| S3ConfigError::invalid(KEY, "an item is neither PEM nor base64 of PEM"))
        })
        .collect::<Result<Vec<String>, _>>()?;
    let mut certs = 0;
    for pem in &pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            cert.map_err(|e| S3ConfigError::invalid(KEY, format!("a certificate cannot be read: {e:?}")))?;
            certs += 1;
        }
    }
    if certs == 0 {
        return Err(S3ConfigError::invalid(KEY, "no PEM certificate found"));
    }
    Ok(pems)
}

/// Extra headers: a JSON list (track 1) or a comma-separated string (track 2) of `name:value`.
fn parse_attributes(s: &str) -> Result<Vec<(String, String)>, S3ConfigError> {
    const KEY: &str = "attributes";
    let items: Vec<String> = if s.starts_with('[') {
        serde_json::from_str(s).map_err(|e| S3ConfigError::invalid(KEY, format!("not a JSON list of strings: {e}")))?
    } else {
        s.split(',').map(str::to_string).collect()
    };
    let mut out = Vec::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        // once, on the first separator: the value may hold more (`x-amz-meta-u=http://…`)
        let Some(at) = item.find([':', '=']) else {
            return Err(S3ConfigError::invalid(KEY, format!("{item:?} is not name:value")));
        };
        let (name, value) = (&item[..at], &item[at + 1..]);
        let (name, value) = (name.trim(), value.trim());
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(S3ConfigError::invalid(KEY, format!("{name:?} is not a header name")));
        }
        if value.chars().any(|c| c.is_control()) {
            return Err(S3ConfigError::invalid(
                KEY,
                format!("the value of {name} has control characters"),
            ));
        }
        out.push((name.to_ascii_lowercase(), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUOQ8Ywo1H+PJ4g2z3vX5r2V+T2kAwCgYIKoZIzj0EAwIw\nDzENMAsGA1UEAwwEdGVzdDAeFw0yNDAxMDEwMDAwMDBaFw0zNDAxMDEwMDAwMDBa\n-----END CERTIFICATE-----\n";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = [
            ("access-key", "AK"),
            ("secret-key", "very-secret"),
            ("bucket", "b"),
            ("endpoint", "http://127.0.0.1:9000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    #[test]
    fn paths_never_give_a_leading_slash() {
        for (path, key, prefix) in [
            ("", "backup-1", None),
            ("/", "backup-1", None),
            ("a/b/", "a/b/backup-1", Some("a/b/")),
            ("/x", "x/backup-1", Some("x/")),
        ] {
            let p = S3Params::from_map(&map(&[("path", path)])).unwrap();
            assert_eq!(p.key("backup-1"), key, "{path:?}");
            assert_eq!(p.prefix().as_deref(), prefix, "{path:?}");
        }
    }

    #[test]
    fn empty_means_unset_and_unknown_keys_are_ignored() {
        let p = S3Params::from_map(&map(&[
            ("region", ""),
            ("storage-class", ""),
            ("data", "{}"),
            ("lib-version", "1.0"),
        ]))
        .unwrap();
        assert_eq!(p.region.as_deref(), Some(DEFAULT_REGION));
        assert_eq!(p.storage_class, None);
        assert_eq!(p.uri_style, UriStyle::Host);
    }

    #[test]
    fn errors_name_the_key_never_the_secret() {
        let mut m = map(&[]);
        m.remove("secret-key");
        assert_eq!(S3Params::from_map(&m).unwrap_err().key(), "secret-key");
        let mut m = map(&[]);
        m.remove("endpoint");
        assert_eq!(S3Params::from_map(&m).unwrap_err().key(), "region");
        for (key, bad) in [
            ("s3-uri-style", "sideways"),
            ("delete-older-than-days", "0"),
            ("delete-older-than-days", "ten"),
            ("tls-ca-chain", "not a cert"),
            ("tls-ca-chain", "[\"x\"]"),
            ("attributes", "no-colon"),
            ("s3-api-version", "3"),
            ("endpoint", "ftp://host"),
        ] {
            let e = S3Params::from_map(&map(&[(key, bad)])).unwrap_err();
            assert_eq!(e.key(), key, "{bad}");
            assert!(!e.to_string().contains("very-secret"));
        }
        let p = S3Params::from_map(&map(&[])).unwrap();
        assert!(!format!("{p:?}").contains("very-secret"));
    }

    #[test]
    fn reads_every_encoding_of_the_interface() {
        let json = serde_json::to_string(&[PEM, PEM]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(PEM);
        for chain in [json.as_str(), b64.as_str(), PEM] {
            let p = S3Params::from_map(&map(&[("tls-ca-chain", chain)])).unwrap();
            assert!(!p.tls_ca_chain.is_empty());
        }
        let p = S3Params::from_map(&map(&[
            ("attributes", "[\"x-amz-tagging:a=b\", \"Cache-Control: no-cache\"]"),
            ("s3-uri-style", "path"),
            ("delete-older-than-days", "30"),
            ("s3-api-version", "4"),
            ("endpoint", "s3.example.com/"),
        ]))
        .unwrap();
        assert_eq!(
            p.attributes,
            vec![
                ("x-amz-tagging".to_string(), "a=b".to_string()),
                ("cache-control".to_string(), "no-cache".to_string())
            ]
        );
        assert_eq!(p.uri_style, UriStyle::Path);
        assert_eq!(p.delete_older_than_days, Some(30));
        assert_eq!(p.endpoint.as_deref(), Some("https://s3.example.com"));
        let p = S3Params::from_map(&map(&[("attributes", "a:1, b:2")])).unwrap();
        assert_eq!(p.attributes.len(), 2);
        // split once per item, on the first '=' or ':'
        let p = S3Params::from_map(&map(&[(
            "attributes",
            "[\"Cache-Control=max-age=90000\", \"x-amz-meta-u=http://example.com/a:b\"]",
        )]))
        .unwrap();
        assert_eq!(
            p.attributes,
            vec![
                ("cache-control".to_string(), "max-age=90000".to_string()),
                ("x-amz-meta-u".to_string(), "http://example.com/a:b".to_string())
            ]
        );
        // a JSON list of base64 PEM items
        let listed = serde_json::to_string(&[b64.as_str(), b64.as_str()]).unwrap();
        let p = S3Params::from_map(&map(&[("tls-ca-chain", listed.as_str())])).unwrap();
        assert_eq!(p.tls_ca_chain.len(), 2);
        assert!(p.tls_ca_chain[0].starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
