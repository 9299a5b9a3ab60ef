//! HTTP(S) as a [`ByteSource`]: basic auth, extra headers, a custom CA, TLS verification off only when
//! asked, and `Range` requests to resume.

use std::sync::Arc;
use std::time::Duration;

use super::policy::NetPolicy;
use super::source::{ByteSource, Opened};
use super::ImportError;

/// How to reach an HTTP(S) source (CDI's `spec.source.http` with its secret and cert config map).
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Basic-auth user and password (CDI: the secret's `accessKeyId` and `secretKey`).
    pub basic_auth: Option<(String, String)>,
    /// Extra request headers ("Name: value").
    pub extra_headers: Vec<String>,
    /// PEM certificates to trust in addition to the public roots (CDI: `certConfigMap`).
    pub ca_pem: Option<Vec<u8>>,
    /// Do not verify the server's certificate (CDI: the CDIConfig's insecure registries / skip-TLS).
    pub insecure_skip_verify: bool,
    /// Connect and read timeout.
    pub timeout: Option<Duration>,
    /// Where the import may connect (literal hosts are checked at once, resolved ones when
    /// connecting, redirects included); `None` connects anywhere.
    pub net_policy: Option<Arc<NetPolicy>>,
}

/// An HTTP(S) URL to import from.
pub struct HttpSource {
    agent: ureq::Agent,
    url: String,
    opts: HttpOptions,
}

fn redact(url: &str) -> String {
    // Never print credentials embedded in a URL's authority.
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[end..]),
        None => url.to_string(),
    }
}

impl HttpSource {
    /// Checks the URL and builds a client for it.
    pub fn new(url: &str, opts: HttpOptions) -> Result<Self, ImportError> {
        let bad = |msg: String| ImportError::BadUrl { url: redact(url), msg };
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| bad("no scheme (expected http:// or https://)".into()))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad(format!("scheme {scheme:?} is not http or https")));
        }
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad("no host".into()));
        }
        for h in &opts.extra_headers {
            if !h.contains(':') {
                return Err(bad(format!("extra header {h:?} is not \"Name: value\"")));
            }
        }
        if let Some(p) = &opts.net_policy {
            p.check_url(url).map_err(|r| bad(r.to_string()))?;
        }
        let tls = tls_config(&opts, &bad)?;
        // The timeout bounds connecting and each read, not the whole transfer (a large image
        // takes as long as it takes). A 1 MiB input buffer (ureq's default is 128 KiB) makes
        // fewer, larger socket reads on fast links.
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(5)
            .timeout_connect(opts.timeout)
            .timeout_per_read(opts.timeout)
            .input_buffer_size(INPUT_BUFFER)
            .tls_config(tls)
            .build();
        let agent = match &opts.net_policy {
            Some(p) => ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::new(),
                p.resolver(),
            ),
            None => ureq::Agent::new_with_config(config),
        };
        Ok(Self { agent, url: url.to_string(), opts })
    }
}

/// ureq's input buffer: the most one socket read takes in.
const INPUT_BUFFER: usize = 1 << 20;

impl HttpSource {
    /// Maps a failed request: TLS failures become [`ImportError::Tls`] with what to do about them.
    fn call_error(&self, e: ureq::Error) -> ImportError {
        let url = redact(&self.url);
        match tls_failure(&e) {
            Some(what) => {
                let hint = if self.opts.ca_pem.is_some() {
                    "the server's certificate does not chain to the CA bundle given (certConfigMap)"
                } else {
                    "give the CA that signed the server's certificate (certConfigMap)"
                };
                ImportError::Tls { url, msg: format!("{what}: {e}; {hint}") }
            }
            None => ImportError::Request { url, source: Box::new(e) },
        }
    }
}

/// rustls error names that mean the handshake failed.
const HANDSHAKE_ERRORS: [&str; 7] = [
    "InvalidMessage",
    "InvalidContentType",
    "AlertReceived",
    "PeerIncompatible",
    "PeerMisbehaved",
    "NoCertificatesPresented",
    "HandshakeFailure",
];

/// What kind of TLS failure `e` is, if it is one (ureq reports handshake failures as I/O errors
/// wrapping the rustls error, so the source chain is searched).
fn tls_failure(e: &ureq::Error) -> Option<&'static str> {
    let classify = |text: &str| {
        if text.contains("InvalidCertificate") || text.contains("invalid peer certificate") {
            Some("certificate not trusted")
        } else if HANDSHAKE_ERRORS.iter().any(|k| text.contains(k)) {
            Some("TLS handshake failed")
        } else {
            None
        }
    };
    match e {
        ureq::Error::Tls(_) | ureq::Error::Pem(_) => Some("TLS failure"),
        ureq::Error::Rustls(r) => classify(&format!("{r:?} {r}")).or(Some("TLS failure")),
        ureq::Error::Io(io) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = io.get_ref().map(|r| r as _);
            while let Some(s) = src {
                if let Some(k) = classify(&format!("{s:?} {s}")) {
                    return Some(k);
                }
                src = s.source();
            }
            None
        }
        _ => None,
    }
}

/// The TLS settings of `opts`; `bad` makes the error naming the URL.
fn tls_config(
    opts: &HttpOptions,
    bad: &dyn Fn(String) -> ImportError,
) -> Result<ureq::tls::TlsConfig, ImportError> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    let mut b = TlsConfig::builder().disable_verification(opts.insecure_skip_verify);
    if let Some(pem) = &opts.ca_pem {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            if let PemItem::Certificate(c) = item.map_err(|e| bad(format!("CA bundle: {e}")))? {
                certs.push(c);
            }
        }
        if certs.is_empty() {
            return Err(bad("CA bundle holds no PEM certificate".into()));
        }
        b = b.root_certs(RootCerts::Specific(Arc::new(certs)));
    }
    Ok(b.build())
}

impl ByteSource for HttpSource {
    fn open(&mut self, offset: u64) -> Result<Opened, ImportError> {
        let mut req = self.agent.get(&self.url);
        if let Some((u, p)) = &self.opts.basic_auth {
            req = req.header("Authorization", &format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        }
        for h in &self.opts.extra_headers {
            if let Some((k, v)) = h.split_once(':') {
                req = req.header(k.trim(), v.trim());
            }
        }
        if offset > 0 {
            req = req.header("Range", &format!("bytes={offset}-"));
        }
        let resp = req.call().map_err(|e| self.call_error(e))?;
        let status = resp.status().as_u16();
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        if !(200..300).contains(&status) {
            let what = match status {
                401 | 403 => "access denied (check the credentials secret)",
                404 => "not found",
                416 => "range not satisfiable",
                _ => "request failed",
            };
            return Err(ImportError::Http { url: redact(&self.url), status, msg: what.into() });
        }
        if offset > 0 && status != 206 {
            return Err(ImportError::NoResume { source_name: redact(&self.url), offset });
        }
        let len: Option<u64> = header("content-length").and_then(|v| v.trim().parse().ok());
        let total = if status == 206 {
            // Content-Range: bytes START-END/TOTAL
            header("content-range").and_then(|v| v.rsplit('/').next().and_then(|t| t.trim().parse().ok()))
        } else {
            len
        };
        // The Content-Type is not trusted either way (servers label unknown files text/html); the
        // importer sniffs the payload itself.
        Ok(Opened { reader: Box::new(resp.into_body().into_reader()), total })
    }

    fn describe(&self) -> String {
        redact(&self.url)
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].iter().enumerate() {
            if i <= c.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_credentials_redacted() {
        for bad in ["", "ftp://x/y", "http://", "no-scheme/x", "http:// space/x"] {
            assert!(
                matches!(HttpSource::new(bad, HttpOptions::default()), Err(ImportError::BadUrl { .. })),
                "{bad}"
            );
        }
        assert_eq!(redact("https://user:pw@host/x"), "https://***@host/x");
        assert_eq!(redact("https://host/x@y"), "https://host/x@y");
        assert!(HttpSource::new("https://example.invalid/disk.img", HttpOptions::default()).is_ok());
        let e = HttpSource::new(
            "https://h/x",
            HttpOptions { ca_pem: Some(b"not pem".to_vec()), ..Default::default() },
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}
