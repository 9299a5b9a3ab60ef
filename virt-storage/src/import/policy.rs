//! Where imports may connect. An import URL is a request to make the node fetch something on a
//! user's behalf; without limits, a DataVolume could point the importer at the node's own API, at
//! the cloud's metadata service (169.254.169.254) or at services listening on the node's loopback.
//!
//! [`NetPolicy`] refuses link-local, unspecified, multicast and broadcast addresses always, and the
//! node's own listeners (its API and upload ports, on loopback or any local address) unless an
//! `allow` entry names them. It is applied twice: to literal addresses in a URL at admission
//! ([`NetPolicy::check_url`], a 422 naming the field), and to every address a host name resolves
//! to, redirects included, when the importer connects ([`NetPolicy::resolver`]), so a DNS name
//! or a redirect cannot reach what a literal address may not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};

/// An address an import may not reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("import from {addr} refused: {why} (allow it on the node with --import-allow {allow})")]
pub struct NetRefusal {
    /// The address (and port) refused.
    pub addr: SocketAddr,
    /// Which rule refused it.
    pub why: &'static str,
    /// What `--import-allow` entry would let it through.
    pub allow: String,
}

/// An address an import may reach despite the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The IP address.
    pub ip: IpAddr,
    /// One port, or every port.
    pub port: Option<u16>,
}

/// An `--import-allow` entry that is neither `IP` nor `IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected IP or IP:PORT ([v6]:PORT for IPv6)")]
pub struct AllowedParseError(pub String);

impl std::str::FromStr for Allowed {
    type Err = AllowedParseError;

    /// `IP` or `IP:PORT` (`[v6]:PORT` for IPv6).
    fn from_str(s: &str) -> Result<Self, AllowedParseError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self { ip, port: None });
        }
        s.parse::<SocketAddr>()
            .map(|a| Self { ip: a.ip(), port: Some(a.port()) })
            .map_err(|_| AllowedParseError(s.to_string()))
    }
}

/// Where imports may connect (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct NetPolicy {
    protected: Vec<SocketAddr>,
    allowed: Vec<Allowed>,
    local: Vec<IpAddr>,
}

impl NetPolicy {
    /// A policy with the fixed rules only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also refuses `addr`, a listener of the node itself. A listener on `0.0.0.0`/`::` protects
    /// its port on loopback and on every address of the node's interfaces.
    pub fn protect(mut self, addr: SocketAddr) -> Self {
        if addr.ip().is_unspecified() && self.local.is_empty() {
            self.local = local_addresses();
        }
        self.protected.push(addr);
        self
    }

    /// Lets imports reach `entry` despite the rules.
    pub fn allow(mut self, entry: Allowed) -> Self {
        self.allowed.push(entry);
        self
    }

    /// Whether an import may connect to `addr`.
    pub fn check(&self, addr: SocketAddr) -> Result<(), NetRefusal> {
        let ip = canonical(addr.ip());
        if self.allowed.iter().any(|a| canonical(a.ip) == ip && a.port.is_none_or(|p| p == addr.port())) {
            return Ok(());
        }
        let refuse = |why| Err(NetRefusal { addr, why, allow: SocketAddr::new(ip, addr.port()).to_string() });
        if ip.is_unspecified() {
            return refuse("an unspecified address reaches the node itself");
        }
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return refuse("multicast and broadcast addresses are not import sources");
        }
        if is_link_local(ip) {
            return refuse(
                "link-local addresses (such as a cloud's metadata service) are not import sources",
            );
        }
        for p in &self.protected {
            if p.port() != addr.port() {
                continue;
            }
            let pip = canonical(p.ip());
            let mine = pip == ip
                || (ip.is_loopback() && (pip.is_loopback() || pip.is_unspecified()))
                || (pip.is_unspecified() && self.local.contains(&ip));
            if mine {
                return refuse("it is the node's own API");
            }
        }
        Ok(())
    }

    /// Checks the host of `url` when it is a literal address (or `localhost`) with the URL's port;
    /// names are checked when they resolve ([`Self::resolver`]).
    pub fn check_url(&self, url: &str) -> Result<(), NetRefusal> {
        let Some((scheme, rest)) = url.split_once("://") else { return Ok(()) };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let default_port = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
        let (host, port) = split_host_port(hostport, default_port);
        let ips: Vec<IpAddr> = if host.eq_ignore_ascii_case("localhost") {
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]
        } else {
            match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => return Ok(()),
            }
        };
        ips.into_iter().try_for_each(|ip| self.check(SocketAddr::new(ip, port)))
    }

    /// A ureq resolver that drops refused addresses, failing the connection (with the refusal
    /// as its message) when none is left.
    pub fn resolver(self: &Arc<Self>) -> PolicyResolver {
        PolicyResolver { policy: self.clone(), inner: DefaultResolver::default() }
    }
}

fn split_host_port(hostport: &str, default_port: u16) -> (&str, u16) {
    if let Some(rest) = hostport.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(default_port);
            return (h, port);
        }
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(default_port)),
        _ => (hostport, default_port),
    }
}

/// IPv4-mapped IPv6 addresses are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The addresses of this machine's interfaces (for listeners bound to every address), found by
/// connecting nowhere: the names the host resolves for itself plus loopback.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..end]) {
            if let Ok(addrs) = (name, 0).to_socket_addrs() {
                out.extend(addrs.map(|a| canonical(a.ip())));
            }
        }
    }
    out
}

/// [`NetPolicy`] as a ureq resolver.
#[derive(Debug)]
pub struct PolicyResolver {
    policy: Arc<NetPolicy>,
    inner: DefaultResolver,
}

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let all = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        let mut refusal = None;
        for addr in all.iter().copied() {
            match self.policy.check(addr) {
                Ok(()) => kept.push(addr),
                Err(r) => refusal = Some(r),
            }
        }
        match (kept.is_empty(), refusal) {
            (true, Some(r)) => {
                Err(ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, r)))
            }
            _ => Ok(kept),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rules_protected_listeners_and_allow_entries() {
        let api: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let p = NetPolicy::new().protect(api);
        assert!(p.check("169.254.169.254:80".parse().unwrap()).is_err());
        assert!(p.check("[fe80::1]:80".parse().unwrap()).is_err());
        assert!(p.check("0.0.0.0:80".parse().unwrap()).is_err());
        assert!(p.check("224.0.0.1:80".parse().unwrap()).is_err());
        assert!(p.check("[::ffff:169.254.169.254]:80".parse().unwrap()).is_err());
        // The node's API, under every loopback spelling; other loopback ports are fine.
        for a in ["127.0.0.1:8443", "127.0.0.2:8443", "[::1]:8443", "[::ffff:127.0.0.1]:8443"] {
            let e = p.check(a.parse().unwrap()).unwrap_err();
            assert_eq!(e.why, "it is the node's own API", "{a}");
        }
        assert!(p.check("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(p.check("192.0.2.7:443".parse().unwrap()).is_ok());
        // Literal URLs, with credentials and ports, and localhost.
        assert!(p.check_url("http://127.0.0.1:8443/apis/x").is_err());
        assert!(p.check_url("http://user:pw@[::1]:8443/x").is_err());
        assert!(p.check_url("http://localhost:8443/x").is_err());
        assert!(p.check_url("http://169.254.169.254/latest/meta-data").is_err());
        assert!(p.check_url("https://images.example.com/x.qcow2").is_ok());
        assert!(p.check_url("http://127.0.0.1:8080/x.img").is_ok());
        // Allowed explicitly.
        let allowed =
            p.clone().allow("169.254.169.254".parse().unwrap()).allow("127.0.0.1:8443".parse().unwrap());
        assert!(allowed.check_url("http://169.254.169.254/x").is_ok());
        assert!(allowed.check_url("http://127.0.0.1:8443/x").is_ok());
        let e = p.check_url("http://169.254.169.254/x").unwrap_err();
        assert!(e.to_string().contains("--import-allow 169.254.169.254:80"), "{e}");
        assert!("nonsense".parse::<Allowed>().is_err());
    }

    #[test]
    fn a_name_resolving_to_a_refused_address_fails_the_connection() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let policy = Arc::new(NetPolicy::new().protect(addr));
        let agent = ureq::Agent::with_parts(
            ureq::Agent::config_builder().build(),
            ureq::unversioned::transport::DefaultConnector::new(),
            policy.resolver(),
        );
        let e = agent.get(&format!("http://localhost:{}/apis", addr.port())).call().unwrap_err();
        assert!(e.to_string().contains("it is the node's own API"), "{e}");
    }
}
