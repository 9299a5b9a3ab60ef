//! HTTP to the registry: TLS set-up, the `/v2/` ping, authentication (anonymous, basic, bearer
//! tokens from the `WWW-Authenticate` challenge) and error mapping.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use ureq::http::{Response, StatusCode};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use super::{Credentials, Reference, RegistryConfig, RegistryError};

/// Largest body read from an error response or a token endpoint.
const SMALL_BODY_LIMIT: u64 = 64 * 1024;
/// Largest token response accepted.
const TOKEN_LIMIT: u64 = 1024 * 1024;

/// How the registry wants to be authenticated, from its `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// No challenge: anonymous access.
    None,
    /// `Basic realm="..."`.
    Basic {
        /// The realm, for error messages.
        realm: String,
    },
    /// `Bearer realm="...",service="..."`: get a token from the realm.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// The `service` parameter to pass back, if any.
        service: Option<String>,
    },
}

impl Challenge {
    fn realm(&self) -> Option<String> {
        match self {
            Challenge::None => None,
            Challenge::Basic { realm } | Challenge::Bearer { realm, .. } => {
                Some(realm.clone()).filter(|r| !r.is_empty())
            }
        }
    }
}

/// Per-registry state, learnt on the first request.
#[derive(Debug, Clone)]
struct HostState {
    /// `https://host:port` or (insecure registries only) `http://host:port`.
    base: String,
    /// Whether this host's TLS certificates are not verified (insecure registry over HTTPS).
    unverified: bool,
    challenge: Challenge,
    /// Bearer tokens by scope.
    tokens: HashMap<String, String>,
}

/// The HTTP side of [`RegistryClient`](super::RegistryClient).
pub(crate) struct Transport {
    /// Verifies certificates against the configured CA bundle (or the Mozilla roots).
    verified: Agent,
    /// No certificate verification; used only for registries configured as insecure.
    unverified: Agent,
    config: RegistryConfig,
    hosts: Mutex<HashMap<String, HostState>>,
}

/// What a request is for: decides which error a 404 becomes.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    /// A manifest (404 → image not found).
    Manifest,
    /// A blob with this digest (404 → blob not found).
    Blob(&'a str),
}

/// A successful response and the URL path it answered.
pub(crate) struct Reply {
    pub(crate) response: Response<Body>,
    pub(crate) path: String,
}

impl Transport {
    pub(crate) fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let roots = match &config.ca_bundle_pem {
            Some(pem) => {
                let mut certs: Vec<Certificate<'static>> = Vec::new();
                for item in ureq::tls::parse_pem(pem) {
                    match item {
                        Ok(PemItem::Certificate(c)) => certs.push(c),
                        Ok(_) => {}
                        Err(e) => {
                            return Err(RegistryError::Config(format!("CA bundle is not valid PEM: {e}")))
                        }
                    }
                }
                if certs.is_empty() {
                    return Err(RegistryError::Config("CA bundle has no CERTIFICATE block".into()));
                }
                RootCerts::new_with_certs(&certs)
            }
            None => RootCerts::WebPki,
        };
        let build = |tls: TlsConfig| {
            let cfg = Agent::config_builder()
                .http_status_as_error(false)
                .tls_config(tls)
                .timeout_connect(Some(config.connect_timeout))
                .timeout_per_read(Some(config.read_timeout))
                .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
                .user_agent(concat!("virt-storage/", env!("CARGO_PKG_VERSION")))
                .build();
            match &config.net_policy {
                Some(p) => Agent::with_parts(
                    cfg,
                    ureq::unversioned::transport::DefaultConnector::new(),
                    p.resolver(),
                ),
                None => cfg.new_agent(),
            }
        };
        let verified = build(TlsConfig::builder().root_certs(roots).build());
        let unverified = build(TlsConfig::builder().disable_verification(true).build());
        Ok(Self { verified, unverified, config, hosts: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn host_state(&self, host: &str) -> Option<HostState> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).get(host).cloned()
    }

    fn store_state(&self, host: &str, state: HostState) {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).insert(host.to_string(), state);
    }

    fn store_token(&self, host: &str, scope: &str, token: String) {
        if let Some(s) = self.hosts.lock().unwrap_or_else(|p| p.into_inner()).get_mut(host) {
            s.tokens.insert(scope.to_string(), token);
        }
    }

    fn agent(&self, unverified: bool) -> &Agent {
        if unverified {
            &self.unverified
        } else {
            &self.verified
        }
    }

    /// Pings `/v2/` once per registry: picks the scheme (HTTPS, or for insecure registries
    /// unverified HTTPS falling back to plain HTTP) and learns the auth challenge.
    fn ensure_host(&self, r: &Reference) -> Result<HostState, RegistryError> {
        let host = r.api_host();
        if let Some(s) = self.host_state(host) {
            return Ok(s);
        }
        let insecure = self.config.is_insecure(r.registry()) || self.config.is_insecure(host);
        let https = format!("https://{host}");
        let (base, unverified, response) = match self.ping(&https, insecure) {
            Ok(resp) => (https, insecure, resp),
            Err(e) if insecure && matches!(e, RegistryError::Tls { .. } | RegistryError::Connect { .. }) => {
                let http = format!("http://{host}");
                match self.ping(&http, false) {
                    Ok(resp) => (http, false, resp),
                    Err(e2) => {
                        return Err(RegistryError::Connect {
                            host: host.to_string(),
                            url: format!("{http}/v2/"),
                            message: format!("insecure registry: HTTPS failed ({e}) and HTTP failed ({e2})"),
                        })
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let status = response.status();
        let challenge = if status == StatusCode::UNAUTHORIZED {
            parse_challenge(&response).unwrap_or(Challenge::Basic { realm: String::new() })
        } else if status.is_success() {
            Challenge::None
        } else {
            let message = small_body(response);
            return Err(RegistryError::Http {
                registry: r.registry().to_string(),
                image: r.image(),
                status: status.as_u16(),
                path: "/v2/".into(),
                message: format!("not an OCI registry API? {message}"),
            });
        };
        log::debug!("registry {host}: {base}, challenge {challenge:?}");
        let state = HostState { base, unverified, challenge, tokens: HashMap::new() };
        self.store_state(host, state.clone());
        Ok(state)
    }

    fn ping(&self, base: &str, unverified: bool) -> Result<Response<Body>, RegistryError> {
        let url = format!("{base}/v2/");
        self.agent(unverified).get(&url).call().map_err(|e| map_ureq_error(&url, e))
    }

    /// Sends a GET or HEAD for `path` (`/v2/<repo>/manifests/<ref>`), authenticating as the
    /// registry asks, and returns the successful response. Any non-2xx status is an error
    /// that names the registry, the image, the status and the path.
    pub(crate) fn request(
        &self,
        r: &Reference,
        method: &str,
        path: &str,
        accept: Option<&str>,
        target: Target<'_>,
    ) -> Result<Reply, RegistryError> {
        self.request_from(r, method, path, accept, 0, target)
    }

    /// [`Transport::request`] asking for the bytes from `from` on (`Range: bytes=FROM-`) when
    /// `from` is not 0. The registry may answer 206 with that range or 200 with everything.
    pub(crate) fn request_from(
        &self,
        r: &Reference,
        method: &str,
        path: &str,
        accept: Option<&str>,
        from: u64,
        target: Target<'_>,
    ) -> Result<Reply, RegistryError> {
        let host = r.api_host();
        let scope = format!("repository:{}:pull", r.repository());
        let mut retried_auth = false;
        loop {
            let state = self.ensure_host(r)?;
            let auth = self.auth_header(r, &state, &scope)?;
            let url = format!("{}{}", state.base, path);
            let agent = self.agent(state.unverified);
            let mut req = if method == "HEAD" { agent.head(&url) } else { agent.get(&url) };
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            if from > 0 {
                req = req.header("Range", &format!("bytes={from}-"));
            }
            let resp = req.call().map_err(|e| map_ureq_error(&url, e))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(Reply { response: resp, path: path.to_string() });
            }
            if status == StatusCode::UNAUTHORIZED && !retried_auth {
                // A new challenge (an expired token, a scope the ping did not show): learn it,
                // drop the cached token and try once more with fresh authentication.
                let challenge = parse_challenge(&resp).unwrap_or_else(|| state.challenge.clone());
                let can_retry = match &challenge {
                    Challenge::Bearer { .. } => true,
                    Challenge::Basic { .. } => self.config.credentials.is_some() && auth.is_none(),
                    Challenge::None => false,
                };
                if can_retry {
                    let mut s = state.clone();
                    s.challenge = challenge;
                    s.tokens.remove(&scope);
                    self.store_state(host, s);
                    retried_auth = true;
                    continue;
                }
            }
            return Err(self.status_error(r, &state, resp, path, target));
        }
    }

    /// The `Authorization` header for a request, fetching a bearer token when needed.
    fn auth_header(
        &self,
        r: &Reference,
        state: &HostState,
        scope: &str,
    ) -> Result<Option<String>, RegistryError> {
        match &state.challenge {
            Challenge::None => Ok(None),
            Challenge::Basic { .. } => Ok(self.config.credentials.as_ref().map(basic_header)),
            Challenge::Bearer { realm, service } => {
                if let Some(t) = state.tokens.get(scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let token = self.fetch_token(r, state, realm, service.as_deref(), scope)?;
                self.store_token(r.api_host(), scope, token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Gets a bearer token from the challenge's realm for `scope`, with basic credentials when
    /// the caller gave some.
    fn fetch_token(
        &self,
        r: &Reference,
        state: &HostState,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let unauthorized = |status: u16, detail: String| RegistryError::Unauthorized {
            registry: r.registry().to_string(),
            image: r.image(),
            status,
            path: realm.to_string(),
            realm: Some(realm.to_string()),
            detail,
        };
        let plain_allowed = realm.starts_with("http://") && self.config.is_insecure(r.registry());
        if !(realm.starts_with("https://") || plain_allowed) {
            return Err(unauthorized(
                401,
                "token realm is not an https:// URL (allowed only for registries configured as insecure)"
                    .into(),
            ));
        }
        let mut url =
            format!("{realm}{}scope={}", if realm.contains('?') { '&' } else { '?' }, urlencode(scope));
        if let Some(s) = service {
            url.push_str("&service=");
            url.push_str(&urlencode(s));
        }
        // The token service may live on another host: verify its certificate unless the
        // registry itself is insecure and the realm is on that same host.
        let same_host = realm_host(realm) == Some(r.api_host());
        let agent = self.agent(state.unverified && same_host);
        let mut req = agent.get(&url);
        if let Some(c) = &self.config.credentials {
            req = req.header("Authorization", basic_header(c));
        }
        let resp = req.call().map_err(|e| map_ureq_error(&url, e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = if self.config.credentials.is_some() {
                "the token service refused the credentials"
            } else {
                "the token service wants credentials and none were given"
            };
            return Err(unauthorized(status.as_u16(), format!("{detail}: {}", small_body(resp))));
        }
        if !status.is_success() {
            return Err(unauthorized(status.as_u16(), format!("token request failed: {}", small_body(resp))));
        }
        let body = read_limited(resp, TOKEN_LIMIT).map_err(|e| match e {
            LimitedReadError::TooLarge => RegistryError::TooLarge {
                registry: r.registry().to_string(),
                image: r.image(),
                what: format!("token response from {realm}"),
                limit: TOKEN_LIMIT,
            },
            LimitedReadError::Other(m) => {
                unauthorized(status.as_u16(), format!("reading the token response: {m}"))
            }
        })?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| unauthorized(status.as_u16(), format!("token response is not JSON: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized(status.as_u16(), "token response has no token".into()))
    }

    fn status_error(
        &self,
        r: &Reference,
        state: &HostState,
        resp: Response<Body>,
        path: &str,
        target: Target<'_>,
    ) -> RegistryError {
        let status = resp.status();
        let registry = r.registry().to_string();
        let image = r.image();
        let code = status.as_u16();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let realm = parse_challenge(&resp).unwrap_or_else(|| state.challenge.clone()).realm();
            let body = small_body(resp);
            let what = if status == StatusCode::FORBIDDEN {
                "access denied"
            } else if self.config.credentials.is_some() {
                "the registry refused the credentials"
            } else {
                "the registry wants credentials and none were given"
            };
            let detail = if body.is_empty() { what.to_string() } else { format!("{what}: {body}") };
            return RegistryError::Unauthorized {
                registry,
                image,
                status: code,
                path: path.to_string(),
                realm,
                detail,
            };
        }
        let body = small_body(resp);
        if status == StatusCode::NOT_FOUND
            || body.contains("MANIFEST_UNKNOWN")
            || body.contains("NAME_UNKNOWN")
        {
            return match target {
                Target::Manifest => {
                    RegistryError::NotFound { registry, image, status: code, path: path.to_string() }
                }
                Target::Blob(d) => RegistryError::BlobNotFound {
                    registry,
                    image,
                    digest: d.to_string(),
                    status: code,
                    path: path.to_string(),
                },
            };
        }
        RegistryError::Http { registry, image, status: code, path: path.to_string(), message: body }
    }
}

/// Configuration knobs of the HTTP layer with their defaults.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);

fn basic_header(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn realm_host(realm: &str) -> Option<&str> {
    let rest = realm.split_once("://")?.1;
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// Parses the response's `WWW-Authenticate` header, if any.
fn parse_challenge(resp: &Response<Body>) -> Option<Challenge> {
    let value = resp.headers().get("www-authenticate")?.to_str().ok()?;
    parse_challenge_str(value)
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
pub(crate) fn parse_challenge_str(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    let params = parse_params(params);
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer { realm: get("realm")?, service: get("service") })
    } else if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic { realm: get("realm").unwrap_or_default() })
    } else {
        None
    }
}

/// `k="v",k2=v2` → pairs; quoted values may contain commas and `\"`.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    out
}

/// Up to 64 KiB of an error response's body, lossily as text, for messages.
fn small_body(resp: Response<Body>) -> String {
    let mut buf = Vec::new();
    let _ = resp.into_body().into_reader().take(SMALL_BODY_LIMIT).read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf);
    let s = s.trim();
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s.to_string()
    }
}

pub(crate) enum LimitedReadError {
    TooLarge,
    Other(String),
}

/// Reads a whole body of at most `limit` bytes; refuses larger ones without reading them all.
pub(crate) fn read_limited(resp: Response<Body>, limit: u64) -> Result<Vec<u8>, LimitedReadError> {
    if let Some(len) = resp.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > limit {
            return Err(LimitedReadError::TooLarge);
        }
    }
    let mut buf = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| LimitedReadError::Other(e.to_string()))?;
    if buf.len() as u64 > limit {
        return Err(LimitedReadError::TooLarge);
    }
    Ok(buf)
}

/// The host[:port] of `url`.
fn url_host(url: &str) -> String {
    realm_host(url).unwrap_or(url).to_string()
}

/// Maps a transport-level failure to [`RegistryError::Tls`] or [`RegistryError::Connect`].
pub(crate) fn map_ureq_error(url: &str, e: ureq::Error) -> RegistryError {
    let host = url_host(url);
    let url = url.to_string();
    let tls = |message: String| RegistryError::Tls { host: host.clone(), url: url.clone(), message };
    match e {
        ureq::Error::Rustls(e) => {
            let m = e.to_string();
            if m.contains("InvalidContentType") {
                tls(format!("{m} (a plain-HTTP server? list the registry as insecure to allow HTTP)"))
            } else {
                tls(m)
            }
        }
        ureq::Error::Tls(m) => tls(m.to_string()),
        ureq::Error::Pem(e) => tls(e.to_string()),
        ureq::Error::Io(io) if is_tls_io(&io) => tls(io.to_string()),
        other => RegistryError::Connect { host, url, message: other.to_string() },
    }
}

/// Whether an I/O error came out of rustls (ureq reports handshake failures as I/O errors
/// wrapping the rustls error).
fn is_tls_io(e: &std::io::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(s) = src {
        let name = format!("{s:?}");
        if name.contains("InvalidCertificate")
            || name.contains("InvalidMessage")
            || name.contains("AlertReceived")
            || name.contains("PeerIncompatible")
            || name.contains("PeerMisbehaved")
            || name.contains("NoCertificatesPresented")
        {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenge_str(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            }
        );
    }

    #[test]
    fn parses_basic_challenge() {
        assert_eq!(
            parse_challenge_str(r#"Basic realm="Registry Realm""#).unwrap(),
            Challenge::Basic { realm: "Registry Realm".into() }
        );
        assert_eq!(parse_challenge_str("Negotiate"), None);
    }

    #[test]
    fn encodes_scope_and_finds_hosts() {
        assert_eq!(urlencode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
        assert_eq!(realm_host("https://h:5001/token?x=1"), Some("h:5001"));
        assert_eq!(url_host("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
    }
}
