//! Where the node listens: `unix:///path/node.sock`, `https://host:port` (the node's TCP listener)
//! or `http://host:port` (a plain-HTTP proxy), chosen from `--server`, then `VIRT_NODE`, then
//! [`DEFAULT_ENDPOINT`] (or a kubeconfig's server, see `client::kubeconfig`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The node's socket when neither `--server` nor `VIRT_NODE` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/virt-node/node.sock";

/// The environment variable naming the node's endpoint.
pub const ENV_ENDPOINT: &str = "VIRT_NODE";

/// The environment variable holding the bearer token for a TCP endpoint.
pub const ENV_TOKEN: &str = "VIRT_TOKEN";

/// Why an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Neither `unix://`, `http://` nor `https://`.
    #[error(
        "node endpoint {input:?}: unsupported scheme (expected unix:///path/node.sock, https://host:port or \
         http://host:port)"
    )]
    Scheme {
        /// The endpoint as given.
        input: String,
    },
    /// `unix://` with no path.
    #[error("node endpoint {input:?}: no socket path after unix://")]
    EmptyPath {
        /// The endpoint as given.
        input: String,
    },
    /// `http://` with no host, a bad port, or a path, query or user part.
    #[error("node endpoint {input:?}: {reason}")]
    Address {
        /// The endpoint as given.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The node's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A unix socket (`unix:///run/virt-node/node.sock`).
    Unix(PathBuf),
    /// TCP (`http://127.0.0.1:8443`); requests carry the bearer token.
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port (80 when not given).
        port: u16,
    },
    /// TLS over TCP (`https://127.0.0.1:8443`, the node's TCP listener); requests carry the bearer
    /// token; the node's certificate is checked against the CA of the client
    /// ([`AsyncNodeClient::with_ca_pem`](super::AsyncNodeClient::with_ca_pem)).
    Https {
        /// Host name or address (IPv6 without brackets); also the name the certificate must hold.
        host: String,
        /// Port (443 when not given).
        port: u16,
    },
}

impl Endpoint {
    /// Parses `unix:///path`, `unix://relative/path`, a bare absolute path, `https://host[:port][/]` or
    /// `http://host[:port][/]`.
    pub fn parse(input: &str) -> Result<Self, EndpointError> {
        let s = input.trim();
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(EndpointError::EmptyPath { input: input.to_string() });
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        let (rest, tls) = match (s.strip_prefix("http://"), s.strip_prefix("https://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => return Err(EndpointError::Scheme { input: input.to_string() }),
        };
        let bad = |reason| EndpointError::Address { input: input.to_string(), reason };
        let authority = match rest.split_once('/') {
            Some((a, "")) => a,
            Some(_) => return Err(bad("a path is not allowed (the API paths are fixed)")),
            None => rest,
        };
        if authority.contains(['@', '?', '#']) {
            return Err(bad("user info, queries and fragments are not allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed [ in an IPv6 address"))?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(|| bad("junk after the IPv6 address"))?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(p) => {
                p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port is not 1-65535"))?
            }
        };
        if tls {
            return Ok(Self::Https { host: host.to_string(), port });
        }
        Ok(Self::Tcp { host: host.to_string(), port })
    }

    /// The endpoint from `flag` (`--server`), else from `env` (the value of `VIRT_NODE`), else
    /// [`DEFAULT_ENDPOINT`]. Empty values count as absent.
    pub fn resolve(flag: Option<&str>, env: Option<&str>) -> Result<Self, EndpointError> {
        let pick = [flag, env].into_iter().flatten().find(|s| !s.trim().is_empty());
        Self::parse(pick.unwrap_or(DEFAULT_ENDPOINT))
    }

    /// [`Endpoint::resolve`] with `VIRT_NODE` read from this process's environment.
    pub fn from_env(flag: Option<&str>) -> Result<Self, EndpointError> {
        let env = std::env::var(ENV_ENDPOINT).ok();
        Self::resolve(flag, env.as_deref())
    }

    /// The `Host` header for requests: `localhost` on a unix socket.
    pub fn host_header(&self) -> String {
        match self {
            Self::Unix(_) => "localhost".to_string(),
            Self::Tcp { host, port } | Self::Https { host, port } if host.contains(':') => {
                format!("[{host}]:{port}")
            }
            Self::Tcp { host, port } | Self::Https { host, port } => format!("{host}:{port}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp { .. } => write!(f, "http://{}", self.host_header()),
            Self::Https { .. } => write!(f, "https://{}", self.host_header()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp { host: host.to_string(), port }
    }

    #[test]
    fn parses_unix_and_http_endpoints() {
        assert_eq!(Endpoint::parse("unix:///run/n.sock").unwrap(), Endpoint::Unix("/run/n.sock".into()));
        assert_eq!(Endpoint::parse("unix://rel/n.sock").unwrap(), Endpoint::Unix("rel/n.sock".into()));
        assert_eq!(Endpoint::parse("/tmp/x.sock").unwrap(), Endpoint::Unix("/tmp/x.sock".into()));
        assert_eq!(Endpoint::parse("http://127.0.0.1:8443").unwrap(), tcp("127.0.0.1", 8443));
        assert_eq!(Endpoint::parse("http://node/").unwrap(), tcp("node", 80));
        assert_eq!(Endpoint::parse("http://[::1]:9").unwrap(), tcp("::1", 9));
        assert_eq!(Endpoint::parse("http://[::1]").unwrap(), tcp("::1", 80));
        let https = Endpoint::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(https, Endpoint::Https { host: "127.0.0.1".into(), port: 8443 });
        assert_eq!(https.to_string(), "https://127.0.0.1:8443");
        assert_eq!(
            Endpoint::parse("https://node").unwrap(),
            Endpoint::Https { host: "node".into(), port: 443 }
        );
    }

    #[test]
    fn refuses_bad_endpoints_naming_the_input() {
        for (input, needle) in [
            ("unix://", "no socket path"),
            ("tcp://n:1", "unsupported scheme"),
            ("http://n:1/api", "a path is not allowed"),
            ("http://n:0", "port"),
            ("http://n:99999", "port"),
            ("http://:80", "no host"),
            ("http://u@n:1", "user info"),
            ("http://[::1", "unclosed"),
        ] {
            let e = Endpoint::parse(input).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(&format!("{input:?}")), "{input}: {e}");
        }
    }

    #[test]
    fn flag_then_env_then_default() {
        let flag = Endpoint::resolve(Some("http://a:1"), Some("http://b:2")).unwrap();
        assert_eq!(flag, tcp("a", 1));
        assert_eq!(Endpoint::resolve(None, Some("http://b:2")).unwrap(), tcp("b", 2));
        assert_eq!(Endpoint::resolve(Some(""), Some("http://b:2")).unwrap(), tcp("b", 2));
        let default = Endpoint::resolve(None, None).unwrap();
        assert_eq!(default, Endpoint::Unix("/run/virt-node/node.sock".into()));
        assert_eq!(default.to_string(), DEFAULT_ENDPOINT);
    }

    #[test]
    fn display_and_host_header() {
        assert_eq!(tcp("::1", 8443).to_string(), "http://[::1]:8443");
        assert_eq!(tcp("n", 80).host_header(), "n:80");
        assert_eq!(Endpoint::Unix("/x".into()).host_header(), "localhost");
    }
}
