//! Edge helpers for the HTTP services (no handlers): the listener, a request span that
//! never records secrets, a bounded body reader, and the server tuning both services share.
//!
//! [`bind`] creates the listener with `server.backlog`. The services bind it themselves
//! (so that `port = 0` works and the port is known before serving) and hand it to
//! actix's `HttpServer::listen`, where actix's own `HttpServer::backlog` (default 1024)
//! does not apply: it only affects sockets that actix binds. Rust's `TcpListener::bind`
//! asks for 128. Whatever is asked, Linux caps the queue at `net.core.somaxconn`.
//!
//! The default `tracing-actix-web` span records the request target, which would put
//! callback tokens (in the path) and subscribe tokens (in the query) into every log
//! line. [`RedactedRootSpan`] records the matched route pattern instead, e.g.
//! `/v1/callbacks/stk/{callback_token}`.

use std::net::{TcpListener, ToSocketAddrs};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{
    AppConfig, Response, Service, ServiceFactory, ServiceRequest, ServiceResponse,
};
use actix_web::{web, HttpMessage, HttpRequest, HttpServer};
use futures_util::StreamExt;
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

use crate::config::ServerSettings;

/// Longer than the idle timeout of common load balancers (60 s), so that the balancer,
/// not the service, closes idle upstream connections.
pub const KEEP_ALIVE: Duration = Duration::from_secs(75);

/// Binds `server.host:server.port` (port 0: a free one) and listens with a queue of
/// `server.backlog` connections, capped by the kernel at `net.core.somaxconn`. Like
/// `TcpListener::bind`: `SO_REUSEADDR`, and each resolved address tried in turn.
pub fn bind(settings: &ServerSettings) -> std::io::Result<TcpListener> {
    let backlog = i32::try_from(settings.backlog).unwrap_or(i32::MAX);
    let mut last = None;
    for addr in (settings.host.as_str(), settings.port).to_socket_addrs()? {
        let attempt = (|| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            #[cfg(unix)]
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(backlog)?;
            Ok::<_, std::io::Error>(TcpListener::from(socket))
        })();
        match attempt {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("server.host {:?} resolves to no address", settings.host),
        )
    }))
}

/// Applies the settings both services share to an `HttpServer` and binds it to
/// `listener`: no signal handling of actix's own (the services own their shutdown),
/// [`KEEP_ALIVE`], the graceful-stop bound and the worker count.
pub fn configure<F, I, S, B>(
    server: HttpServer<F, I, S, B>,
    listener: TcpListener,
    settings: &ServerSettings,
) -> std::io::Result<HttpServer<F, I, S, B>>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: ServiceFactory<actix_http::Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<actix_http::Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    // TCP_NODELAY on every accepted connection: a result frame is one small write, and
    // Nagle's algorithm would hold it back while an earlier segment (a Ping, the previous
    // response) waits for its delayed ACK. actix leaves the OS default (off) otherwise.
    let server = server
        .tcp_nodelay(true)
        .listen(listener)?
        .disable_signals()
        .keep_alive(KEEP_ALIVE)
        .shutdown_timeout(settings.shutdown_timeout().as_secs().max(1))
        .workers(settings.effective_workers());
    Ok(server)
}

/// Root span per request: method, route pattern, request id, status, and the payment's
/// `checkout_request_id` once a route knows it ([`record_checkout_request_id`]). No
/// target, no query string, no headers.
pub struct RedactedRootSpan;

/// The request's root span (`http_request` of [`RedactedRootSpan`]); a disabled span
/// for a request not served through `TracingLogger`.
pub fn request_span(req: &HttpRequest) -> Span {
    req.extensions()
        .get::<tracing_actix_web::RootSpan>()
        .map(|root| Span::clone(root))
        .unwrap_or_else(Span::none)
}

/// Records the payment a request is about as `checkout_request_id` on the current span
/// and on the request's root span (`request`, from [`request_span`]). Then every line of
/// the request carries it, also those written after the handler returned: the error
/// line of a 5xx (written while actix turns the error into a response) and the root
/// span's own "request failed".
pub fn record_checkout_request_id(request: &Span, id: &str) {
    Span::current().record("checkout_request_id", id);
    request.record("checkout_request_id", id);
}

impl RootSpanBuilder for RedactedRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.to_string())
            .unwrap_or_default();
        tracing::info_span!(
            "http_request",
            http.method = %request.method(),
            http.route = %route,
            request_id = %request_id,
            http.status_code = tracing::field::Empty,
            checkout_request_id = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(
        span: Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        let status = match outcome {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        span.record("http.status_code", status);
        if status >= 500 {
            let _e = span.enter();
            tracing::warn!(status, "request failed");
        }
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read request body: {0}")]
    Read(String),
}

/// Reads a request body of at most `limit` bytes; refuses at once when the declared
/// Content-Length is larger, and stops reading as soon as the limit is passed.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, BodyError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    fn server(backlog: u32) -> ServerSettings {
        ServerSettings {
            host: "127.0.0.1".into(),
            port: 0,
            workers: 1,
            shutdown_timeout_ms: 1000,
            backlog,
            trusted_proxies: Vec::new(),
        }
    }

    /// How many of `n` connections to a listener that never accepts complete their
    /// handshake within a short bound.
    fn queued(listener: &TcpListener, n: usize) -> usize {
        let addr = listener.local_addr().expect("addr");
        let mut open = Vec::new();
        for _ in 0..n {
            if let Ok(c) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                open.push(c);
            }
        }
        open.len()
    }

    /// Linux queues `backlog + 1` connections and drops the SYNs past that, so a tiny
    /// backlog is visible from outside; Rust's own `TcpListener::bind` (128) would take
    /// all of them.
    #[cfg(target_os = "linux")]
    #[test]
    fn bind_listens_with_the_configured_backlog() {
        let small = bind(&server(1)).expect("bind");
        let n = queued(&small, 6);
        assert!((1..=3).contains(&n), "{n} of 6 queued with backlog 1");
        let default = bind(&server(4096)).expect("bind");
        assert_eq!(queued(&default, 6), 6);
    }

    /// Every accepted connection has TCP_NODELAY: the server reports what it saw on its
    /// side of the socket.
    #[actix_web::test]
    async fn accepted_connections_have_tcp_nodelay() {
        use actix_web::{web, App, HttpRequest, HttpResponse};
        let listener = bind(&server(16)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let srv = configure(
            HttpServer::new(|| {
                App::new().route(
                    "/",
                    web::get().to(|req: HttpRequest| async move {
                        let nodelay = req.conn_data::<bool>().copied();
                        HttpResponse::Ok().body(format!("{nodelay:?}"))
                    }),
                )
            })
            .on_connect(|conn, ext| {
                if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    ext.insert(tcp.nodelay().unwrap_or(false));
                }
            }),
            listener,
            &server(16),
        )
        .expect("configure")
        .run();
        let handle = srv.handle();
        actix_web::rt::spawn(srv);
        let body = reqwest::get(format!("http://{addr}/"))
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        handle.stop(false).await;
        assert_eq!(body, "Some(true)");
    }

    #[test]
    fn bind_refuses_an_unresolvable_host() {
        let mut s = server(16);
        s.host = "no such host".into();
        assert!(bind(&s).is_err());
    }
}
