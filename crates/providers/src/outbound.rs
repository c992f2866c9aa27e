//! The callback client: one delivery attempt of a notification to a run's `callback_url`.
//!
//! The decisions are the core's (`switchyard_core::outbound`); this is the I/O around them:
//! check the URL → resolve the host once (`tokio::net::lookup_host`; an IP literal is not
//! resolved) → [`pick_address`] over **every** answer → POST over a connection to exactly that
//! address. The request goes through a client built for this delivery whose only way to
//! resolve a name is the pinned answer (`ClientBuilder::resolve`, and a resolver that refuses
//! everything else), so no second resolution can swap the address (DNS rebinding). The
//! client follows no redirect, uses no proxy (a proxy would resolve the name itself), retries
//! nothing (the notifier owns retries), and has explicit connect and total timeouts. The
//! response status is the answer; its body is read up to `max_response_bytes` and the rest is
//! abandoned. The TLS configuration (the platform's root certificates, read by the verifier)
//! is built once per process ([`tls`]) and shared by every delivery's client: building it per
//! delivery read the system's certificates each time.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use switchyard_core::outbound::{check_callback_url, pick_address, AttemptError, DeliveryResult};

/// The `user-agent` every delivery carries.
pub const USER_AGENT: &str = "switchyard-notifier";

/// Time and size caps of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundLimits {
    /// TCP + TLS connect, in milliseconds; it also bounds the host's resolution.
    pub connect_timeout_ms: u64,
    /// The whole attempt (resolution, connect, request, response), in milliseconds.
    pub timeout_ms: u64,
    /// Most of the response body read; the rest is abandoned unread.
    pub max_response_bytes: usize,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        OutboundLimits {
            connect_timeout_ms: 5_000,
            timeout_ms: 10_000,
            max_response_bytes: 64 * 1024,
        }
    }
}

/// One attempt's outcome (the port's type): for the notifier's decision
/// (`switchyard_core::outbound::decide`) and its delivery log.
pub use switchyard_core::ports::OutboundAttempt as Attempt;

#[async_trait::async_trait]
impl switchyard_core::ports::CallbackSender for CallbackClient {
    async fn deliver(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        allow_private: bool,
    ) -> Attempt {
        CallbackClient::deliver(self, url, headers, body, allow_private).await
    }
}

/// How host names become addresses: the system resolver, or (in tests) a fixed answer.
#[derive(Debug, Clone)]
enum Resolver {
    System,
    #[cfg(test)]
    Fixed(Vec<IpAddr>),
}

/// Delivers notifications. Build it once; each [`deliver`](CallbackClient::deliver) makes its
/// own pinned HTTP client (a TLS handshake per attempt: a connection is never reused across
/// deliveries, so it can never outlive the address check that allowed it).
#[derive(Debug, Clone)]
pub struct CallbackClient {
    limits: OutboundLimits,
    resolver: Resolver,
}

impl CallbackClient {
    pub fn new(limits: OutboundLimits) -> CallbackClient {
        CallbackClient {
            limits,
            resolver: Resolver::System,
        }
    }

    pub fn limits(&self) -> OutboundLimits {
        self.limits
    }

    /// POSTs `body` to `url` with `headers` (the Standard Webhooks `webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`, …; `content-type: application/json` and the
    /// user agent unless given). `allow_private` lifts the address policy and allows `http`
    /// (local development only). Never fails: every outcome is an [`Attempt`].
    pub async fn deliver(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        allow_private: bool,
    ) -> Attempt {
        let started = Instant::now();
        let mut address = None;
        let result = self
            .attempt(url, headers, body, allow_private, started, &mut address)
            .await;
        Attempt {
            result,
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            address: address.map(|a: SocketAddr| a.to_string()),
        }
    }

    async fn attempt(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        allow_private: bool,
        started: Instant,
        address: &mut Option<SocketAddr>,
    ) -> DeliveryResult {
        use DeliveryResult::Failed;
        let total = Duration::from_millis(self.limits.timeout_ms);
        let connect = Duration::from_millis(self.limits.connect_timeout_ms);
        let target = match check_callback_url(url, allow_private) {
            Ok(t) => t,
            Err(r) => return Failed(AttemptError::Refused(r)),
        };
        let resolved = if target.ip_literal.is_some() {
            Vec::new()
        } else {
            let budget = connect.min(total);
            match tokio::time::timeout(budget, self.resolve(&target.host, target.port)).await {
                Err(_) => return Failed(AttemptError::Timeout),
                Ok(Err(_)) => return Failed(AttemptError::Connect),
                Ok(Ok(ips)) => ips,
            }
        };
        let ip = match pick_address(&target, &resolved, allow_private) {
            Ok(ip) => ip,
            Err(r) => return Failed(AttemptError::Refused(r)),
        };
        let pinned = SocketAddr::new(ip, target.port);
        *address = Some(pinned);
        let remaining = total.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Failed(AttemptError::Timeout);
        }
        let mut builder = client_builder()
            .connect_timeout(connect)
            .timeout(remaining)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .no_proxy()
            .user_agent(USER_AGENT)
            .pool_max_idle_per_host(0)
            .dns_resolver(NoResolution);
        if target.ip_literal.is_none() {
            builder = builder.resolve(&target.host, pinned);
        }
        let Ok(client) = builder.build() else {
            return Failed(AttemptError::Other);
        };
        let mut req = client.post(target.url.as_str());
        let given = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !given("content-type") {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => return Failed(transport(&e)),
        };
        let status = resp.status().as_u16();
        // The status is the receiver's answer. The body is read up to the cap only so a
        // receiver can finish writing; past the cap, or if it breaks off, it is abandoned.
        let _ = crate::http::read_capped(resp, self.limits.max_response_bytes).await;
        DeliveryResult::Status(status)
    }

    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        match &self.resolver {
            Resolver::System => Ok(tokio::net::lookup_host((host, port))
                .await?
                .map(|a| a.ip())
                .collect()),
            #[cfg(test)]
            Resolver::Fixed(ips) => Ok(ips.clone()),
        }
    }
}

/// The process's TLS client configuration, made on first use: rustls on the `ring` provider
/// with the platform verifier (the system's roots, as reqwest's default would use). Shared by
/// every client [`client_builder`] starts, so a delivery's pinned client does not load the
/// roots again.
///
/// Why `ring` and an explicit configuration: reqwest's own provider is aws-lc, a C library
/// that made each Lambda function 0.48 MB larger (issue 25, measured); reqwest is built
/// without one (`rustls-no-provider`), so each client is handed this configuration. If the
/// system's roots cannot be loaded, the configuration trusts no server (HTTPS fails its
/// certificate check, which callers classify like any TLS failure) and the log says why;
/// plain HTTP (local fakes, emulators) still works.
pub fn tls() -> Option<rustls::ClientConfig> {
    use rustls_platform_verifier::BuilderVerifierExt;
    static TLS: std::sync::OnceLock<Option<rustls::ClientConfig>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b,
            Err(e) => {
                // `ring` has suites for TLS 1.2 and 1.3: not expected.
                tracing::error!(error = %e, "TLS configuration: no protocol version");
                return None;
            }
        };
        Some(match builder.clone().with_platform_verifier() {
            Ok(b) => b.with_no_client_auth(),
            Err(e) => {
                tracing::warn!(error = %e, "TLS configuration: the system's root certificates could not be loaded; HTTPS requests will fail their certificate check");
                builder
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }
        })
    })
    .clone()
}

/// Where every HTTP client of Switchyard's binaries starts: reqwest's builder with the
/// process's TLS configuration ([`tls`]). Release builds link no other crypto provider, so a
/// client built any other way has none.
pub fn client_builder() -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match tls() {
        Some(config) => builder.tls_backend_preconfigured(config),
        // A value reqwest does not know makes `build()` return an error ("unknown TLS
        // backend") instead of looking for a default provider, which it would panic without.
        None => builder.tls_backend_preconfigured(()),
    }
}

/// The pinned client's fallback resolver: it resolves nothing, so the only address the client
/// can reach is the one `ClientBuilder::resolve` pinned.
struct NoResolution;

impl reqwest::dns::Resolve for NoResolution {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            Err::<reqwest::dns::Addrs, _>(
                "the callback client resolves only the address it checked".into(),
            )
        })
    }
}

/// Transport failures, in the core's classes.
fn transport(e: &reqwest::Error) -> AttemptError {
    if e.is_timeout() {
        AttemptError::Timeout
    } else if e.is_connect() {
        AttemptError::Connect
    } else {
        AttemptError::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use switchyard_core::outbound::AddressClass;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The shared TLS configuration is made, once, and reqwest takes it (a rustls of another
    /// version would be refused when the client is built, failing every delivery).
    #[test]
    fn the_tls_configuration_is_made_once_and_reqwest_takes_it() {
        let tls = tls().expect("a TLS configuration");
        assert!(Arc::ptr_eq(&tls.crypto_provider().clone(), &tls_provider()));
        let client = client_builder().build();
        assert!(client.is_ok(), "{client:?}");
    }

    fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
        tls().expect("made before").crypto_provider().clone()
    }

    /// What a test server answers.
    #[derive(Clone)]
    enum Reply {
        /// These bytes, at once.
        Now(String),
        /// These bytes, after a pause.
        After(Duration, String),
        /// A 200 head, then a body that never ends.
        Endless,
    }

    /// A raw HTTP/1.1 server on 127.0.0.1 that counts connections and keeps each request.
    struct Server {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
        /// Set when a write failed: the client hung up.
        hung_up: Arc<AtomicBool>,
    }

    impl Server {
        async fn start(reply: Reply) -> Server {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server = Server {
                addr: listener.local_addr().unwrap(),
                connections: Arc::default(),
                requests: Arc::default(),
                hung_up: Arc::default(),
            };
            let (connections, requests, hung_up) = (
                server.connections.clone(),
                server.requests.clone(),
                server.hung_up.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (reply, requests, hung_up) =
                        (reply.clone(), requests.clone(), hung_up.clone());
                    tokio::spawn(async move {
                        let request = read_request(&mut sock).await;
                        requests.lock().unwrap().push(request);
                        let ok = match reply {
                            Reply::Now(r) => sock.write_all(r.as_bytes()).await.is_ok(),
                            Reply::After(d, r) => {
                                tokio::time::sleep(d).await;
                                sock.write_all(r.as_bytes()).await.is_ok()
                            }
                            Reply::Endless => {
                                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                                            connection: close\r\n\r\n";
                                let mut ok = sock.write_all(head.as_bytes()).await.is_ok();
                                let chunk = vec![b'x'; 64 * 1024];
                                while ok {
                                    ok = sock.write_all(&chunk).await.is_ok();
                                }
                                ok
                            }
                        };
                        if !ok {
                            hung_up.store(true, Ordering::SeqCst);
                        }
                    });
                }
            });
            server
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
    }

    /// The request head and its `content-length` body, as text.
    async fn read_request(sock: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return text;
                }
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).to_string(),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn client() -> CallbackClient {
        CallbackClient::new(OutboundLimits::default())
    }

    fn hdrs() -> Vec<(String, String)> {
        vec![
            ("webhook-id".into(), "msg_1".into()),
            ("webhook-timestamp".into(), "1614265330".into()),
            ("webhook-signature".into(), "v1,abc=".into()),
        ]
    }

    #[tokio::test]
    async fn delivers_200_to_loopback_when_private_is_allowed() {
        let server = Server::start(Reply::Now(OK.into())).await;
        let body = br#"{"type":"run.succeeded"}"#.to_vec();
        let attempt = client()
            .deliver(&server.url("/hook?t=1"), &hdrs(), body, true)
            .await;
        assert_eq!(attempt.result, DeliveryResult::Status(200));
        assert_eq!(attempt.address, Some(server.addr.to_string()));
        assert_eq!(server.connections(), 1);
        let req = server.requests.lock().unwrap()[0].to_ascii_lowercase();
        assert!(req.starts_with("post /hook?t=1 http/1.1\r\n"), "{req}");
        for line in [
            "content-type: application/json",
            "user-agent: switchyard-notifier",
            "webhook-id: msg_1",
            "webhook-timestamp: 1614265330",
            "webhook-signature: v1,abc=",
        ] {
            assert!(req.contains(&format!("\r\n{line}\r\n")), "{line} in {req}");
        }
        assert!(
            req.ends_with("\r\n\r\n{\"type\":\"run.succeeded\"}"),
            "{req}"
        );
    }

    /// `localhost` through the system resolver reaches the server when private addresses are
    /// allowed, and is refused — before any connection — when they are not.
    #[tokio::test]
    async fn localhost_is_refused_without_a_connection_unless_private_is_allowed() {
        let server = Server::start(Reply::Now(OK.into())).await;
        let url = format!("http://localhost:{}/hook", server.addr.port());
        let refused = client().deliver(&url, &hdrs(), b"{}".to_vec(), false).await;
        assert!(
            matches!(
                refused.result,
                DeliveryResult::Failed(AttemptError::Refused(_))
            ),
            "{refused:?}"
        );
        assert_eq!(refused.address, None);
        let https = format!("https://localhost:{}/hook", server.addr.port());
        let refused = client()
            .deliver(&https, &hdrs(), b"{}".to_vec(), false)
            .await;
        assert!(
            matches!(
                refused.result,
                DeliveryResult::Failed(AttemptError::Refused(_))
            ),
            "{refused:?}"
        );
        assert_eq!(server.connections(), 0);
        let allowed = client().deliver(&url, &hdrs(), b"{}".to_vec(), true).await;
        assert_eq!(allowed.result, DeliveryResult::Status(200));
        assert_eq!(server.connections(), 1);
    }

    /// A name whose answer is refused is refused as a whole, with no connection; with private
    /// addresses allowed, the connection goes to the checked address and nowhere else (a
    /// `.invalid` name: any resolution of its own would fail).
    #[tokio::test]
    async fn the_connection_goes_to_the_checked_address_only() {
        let server = Server::start(Reply::Now(OK.into())).await;
        let port = server.addr.port();
        let resolving_to = |ips: &[&str]| CallbackClient {
            limits: OutboundLimits::default(),
            resolver: Resolver::Fixed(ips.iter().map(|s| s.parse().unwrap()).collect()),
        };
        let https = format!("https://hooks.callback.invalid:{port}/hook");
        for answer in [&["127.0.0.1"][..], &["93.184.216.34", "10.0.0.5"]] {
            let attempt = resolving_to(answer)
                .deliver(&https, &hdrs(), b"{}".to_vec(), false)
                .await;
            let DeliveryResult::Failed(AttemptError::Refused(r)) = &attempt.result else {
                panic!("{answer:?}: {attempt:?}")
            };
            assert!(r.address_class().is_some(), "{r}");
            assert!(r
                .to_string()
                .starts_with("callback host hooks.callback.invalid resolves to"));
        }
        let attempt = resolving_to(&[])
            .deliver(&https, &hdrs(), b"{}".to_vec(), false)
            .await;
        assert!(
            matches!(
                attempt.result,
                DeliveryResult::Failed(AttemptError::Refused(_))
            ),
            "{attempt:?}"
        );
        assert_eq!(server.connections(), 0);

        let http = format!("http://hooks.callback.invalid:{port}/hook");
        let attempt = resolving_to(&["127.0.0.1"])
            .deliver(&http, &hdrs(), b"{}".to_vec(), true)
            .await;
        assert_eq!(attempt.result, DeliveryResult::Status(200));
        assert_eq!(attempt.address, Some(format!("127.0.0.1:{port}")));
        let req = server.requests.lock().unwrap()[0].to_ascii_lowercase();
        assert!(req.contains(&format!("\r\nhost: hooks.callback.invalid:{port}\r\n")));
    }

    #[tokio::test]
    async fn an_ip_literal_is_refused_without_a_connection() {
        let attempt = client()
            .deliver("https://[::ffff:127.0.0.1]:9/", &hdrs(), Vec::new(), false)
            .await;
        let DeliveryResult::Failed(AttemptError::Refused(r)) = &attempt.result else {
            panic!("{attempt:?}")
        };
        assert_eq!(r.address_class(), Some(AddressClass::Ipv4Mapped));
        assert_eq!(attempt.address, None);
    }

    #[tokio::test]
    async fn a_redirect_is_reported_not_followed() {
        let other = Server::start(Reply::Now(OK.into())).await;
        let head = format!(
            "HTTP/1.1 302 Found\r\nlocation: {}\r\ncontent-length: 0\r\n\r\n",
            other.url("/")
        );
        let server = Server::start(Reply::Now(head)).await;
        let attempt = client()
            .deliver(&server.url("/hook"), &hdrs(), b"{}".to_vec(), true)
            .await;
        assert_eq!(attempt.result, DeliveryResult::Status(302));
        assert_eq!(server.connections(), 1);
        assert_eq!(other.connections(), 0);
    }

    #[tokio::test]
    async fn gone_is_reported() {
        let server = Server::start(Reply::Now(
            "HTTP/1.1 410 Gone\r\ncontent-length: 0\r\n\r\n".into(),
        ))
        .await;
        let attempt = client()
            .deliver(&server.url("/hook"), &hdrs(), b"{}".to_vec(), true)
            .await;
        assert_eq!(attempt.result, DeliveryResult::Status(410));
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let attempt = client()
            .deliver(
                &format!("http://{addr}/hook"),
                &hdrs(),
                b"{}".to_vec(),
                true,
            )
            .await;
        assert_eq!(
            attempt.result,
            DeliveryResult::Failed(AttemptError::Connect)
        );
        assert_eq!(attempt.address, Some(addr.to_string()));
    }

    #[tokio::test]
    async fn a_slow_receiver_times_out() {
        let server = Server::start(Reply::After(Duration::from_secs(5), OK.into())).await;
        let client = CallbackClient::new(OutboundLimits {
            timeout_ms: 200,
            ..OutboundLimits::default()
        });
        let started = Instant::now();
        let attempt = client
            .deliver(&server.url("/hook"), &hdrs(), b"{}".to_vec(), true)
            .await;
        assert_eq!(
            attempt.result,
            DeliveryResult::Failed(AttemptError::Timeout)
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{attempt:?}");
        assert!(attempt.latency_ms >= 200, "{attempt:?}");
    }

    /// An endless body is abandoned at the cap: the attempt ends long before its timeout, with
    /// the status, and the client hangs up on the server.
    #[tokio::test]
    async fn a_huge_body_is_not_read_whole() {
        let server = Server::start(Reply::Endless).await;
        let client = CallbackClient::new(OutboundLimits {
            timeout_ms: 60_000,
            ..OutboundLimits::default()
        });
        let started = Instant::now();
        let attempt = client
            .deliver(&server.url("/hook"), &hdrs(), b"{}".to_vec(), true)
            .await;
        assert_eq!(attempt.result, DeliveryResult::Status(200));
        assert!(started.elapsed() < Duration::from_secs(10), "{attempt:?}");
        let waited = Instant::now();
        while !server.hung_up.load(Ordering::SeqCst) {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "client kept reading"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
