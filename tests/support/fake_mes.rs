//! A builder-style fake MES that counts hits per path.
//!
//! Each route is an exact path (the query is ignored for matching) with a reply; a gate
//! can hold requests until the test releases them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Body the fake answers with.
pub type FakeBody = BoxBody<Bytes, hyper::Error>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<FakeBody>> + Send>>
        + Send
        + Sync,
>;

/// A response body from bytes.
pub fn full(b: impl Into<Bytes>) -> FakeBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Holds requests until opened.
#[derive(Clone)]
pub struct Gate {
    tx: Arc<watch::Sender<bool>>,
}

impl Gate {
    /// A closed gate.
    pub fn closed() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Lets every held and future request through.
    pub fn open(&self) {
        self.tx.send_replace(true);
    }

    async fn pass(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Builds a fake MES.
#[derive(Default)]
pub struct FakeMesBuilder {
    routes: Vec<(String, Handler)>,
    gates: Vec<(String, Gate)>,
}

impl FakeMesBuilder {
    /// Answers `path` with a fixed status, headers and body.
    pub fn reply(self, path: &str, status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = Bytes::from(body.to_owned());
        self.handler(path, move |_req| {
            let mut resp = Response::new(full(body.clone()));
            *resp.status_mut() = StatusCode::from_u16(status).expect("status");
            for (k, v) in &headers {
                resp.headers_mut().append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                );
            }
            async move { resp }
        })
    }

    /// Answers `path` with 200 JSON.
    pub fn json(self, path: &str, body: &str) -> Self {
        self.reply(path, 200, &[("content-type", "application/json")], body)
    }

    /// Answers `path` with a handler of its own (use `"*"` for every other path).
    pub fn handler<F, Fut>(mut self, path: &str, f: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<FakeBody>> + Send + 'static,
    {
        let h: Handler = Arc::new(move |req| Box::pin(f(req)));
        self.routes.push((path.to_owned(), h));
        self
    }

    /// Holds requests to `path` until `gate` opens.
    pub fn gate(mut self, path: &str, gate: &Gate) -> Self {
        self.gates.push((path.to_owned(), gate.clone()));
        self
    }

    /// Starts serving on a free port.
    pub async fn start(self) -> FakeMes {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake MES");
        let addr = listener.local_addr().expect("addr");
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let state = Arc::new((self.routes, self.gates, hits.clone()));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(dispatch(&state.0, &state.1, &state.2, req).await) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeMes { addr, hits, task }
    }
}

async fn dispatch(
    routes: &[(String, Handler)],
    gates: &[(String, Gate)],
    hits: &Mutex<HashMap<String, usize>>,
    req: Request<Incoming>,
) -> Response<FakeBody> {
    let path = req.uri().path().to_owned();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    if let Some((_, gate)) = gates.iter().find(|(p, _)| *p == path) {
        gate.pass().await;
    }
    let handler = routes
        .iter()
        .find(|(p, _)| *p == path)
        .or_else(|| routes.iter().find(|(p, _)| p == "*"));
    match handler {
        Some((_, h)) => h(req).await,
        None => {
            let mut r = Response::new(full("{\"error\":\"not found\"}"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// A running fake MES.
pub struct FakeMes {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeMes {
    /// Starts building one.
    pub fn builder() -> FakeMesBuilder {
        FakeMesBuilder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen for `path` (any query).
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Requests seen in all.
    pub fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

impl Drop for FakeMes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A MES that reads each request body whole, answers `received=N`, and notes in `seen`
/// what it made of it: `complete:N`, or `broken` when the body failed mid-way.
pub async fn body_noting_mes(seen: &Arc<Mutex<Vec<String>>>) -> FakeMes {
    use http_body_util::BodyExt;
    let log = seen.clone();
    FakeMes::builder()
        .handler("*", move |req: Request<hyper::body::Incoming>| {
            let log = log.clone();
            async move {
                let (note, answer) = match req.into_body().collect().await {
                    Ok(b) => {
                        let n = b.to_bytes().len();
                        (format!("complete:{n}"), format!("received={n}"))
                    }
                    Err(_) => ("broken".to_owned(), "broken".to_owned()),
                };
                log.lock().unwrap().push(note);
                Response::<FakeBody>::new(full(answer))
            }
        })
        .start()
        .await
}
