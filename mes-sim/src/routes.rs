//! The simulator's HTTP surface: routing, query and body parsing, the latency / MVCC read
//! model, and the JSON replies (errors included).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::data::{self, Status};
use super::state::{Kind, Shared};
use super::store::{ChangeError, NewOrder, Page, Store};

/// Response body type of the simulator: every answer is small and fully built.
pub(super) type Body = Full<Bytes>;

/// Request bodies beyond this are refused; the real API takes only tiny JSON documents.
const MAX_BODY: usize = 64 * 1024;
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 200;

/// Answers one request; never fails (bad input becomes a 4xx with a JSON error body).
pub(super) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let route = Route::of(req.method(), req.uri().path());
    // Counted on arrival, and for GETs nothing awaits between here and the MVCC snapshot:
    // the tests use this counter as the "read has taken its snapshot" signal.
    if let Some(kind) = route.kind() {
        shared.count(kind);
    }
    let reply = match route {
        Route::List => list(shared, req.uri().query()).await,
        Route::Detail(id) => detail(shared, id).await,
        Route::Counts => counts(shared).await,
        Route::StatusChange(id) => status_change(shared, id, req.into_body()).await,
        Route::Create => create(shared, req.into_body()).await,
        Route::Price => price(shared, req.into_body()).await,
        Route::Stats => Reply::serialize(&shared.stats()),
        Route::PriceRuns => Reply::serialize(&shared.price_runs()),
        Route::ResetStats => {
            shared.reset_stats();
            return no_content();
        }
        Route::Other => Reply::error(
            StatusCode::NOT_FOUND,
            format!("no route for {}", describe(&req)),
        ),
    };
    reply.into_response()
}

fn describe<B>(req: &Request<B>) -> String {
    format!("{} {}", req.method(), req.uri().path())
}

/// Which endpoint a request is for; ids that are not integers are kept as `None` so the
/// endpoint can answer 404 (and the request still counts under its kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    List,
    Create,
    Counts,
    Detail(Option<u64>),
    StatusChange(Option<u64>),
    Price,
    Stats,
    PriceRuns,
    ResetStats,
    Other,
}

impl Route {
    fn of(method: &Method, path: &str) -> Self {
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["api", "orders"]) => Route::List,
            ("POST", ["api", "orders"]) => Route::Create,
            ("GET", ["api", "orders", "status-counts"]) => Route::Counts,
            ("GET", ["api", "orders", id]) if !id.is_empty() => Route::Detail(parse_digits(id)),
            ("PATCH", ["api", "orders", id, "status"]) if !id.is_empty() => {
                Route::StatusChange(parse_digits(id))
            }
            ("POST", ["api", "price-calculations"]) => Route::Price,
            ("GET", ["__sim", "stats"]) => Route::Stats,
            ("GET", ["__sim", "price-calculations"]) => Route::PriceRuns,
            ("POST", ["__sim", "reset-stats"]) => Route::ResetStats,
            _ => Route::Other,
        }
    }

    /// The counter this request bumps; the simulator's own endpoints are not counted.
    fn kind(self) -> Option<Kind> {
        match self {
            Route::List => Some(Kind::List),
            Route::Create => Some(Kind::Create),
            Route::Counts => Some(Kind::Counts),
            Route::Detail(_) => Some(Kind::Detail),
            Route::StatusChange(_) => Some(Kind::StatusChange),
            Route::Price => Some(Kind::Price),
            Route::Other => Some(Kind::Other),
            Route::Stats | Route::PriceRuns | Route::ResetStats => None,
        }
    }
}

/// Digits only (no sign, no spaces), fitting in a u64.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A fully built answer; everything but 204 is JSON.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: Bytes,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl Reply {
    fn ok(body: Bytes) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }

    fn serialize<T: Serialize>(value: &T) -> Self {
        // Our reply types are plain structs of strings and numbers: this cannot fail.
        Self::ok(Bytes::from(serde_json::to_vec(value).unwrap_or_default()))
    }

    fn error(status: StatusCode, message: impl AsRef<str>) -> Self {
        let body = serde_json::to_vec(&ErrorBody {
            error: message.as_ref(),
        })
        .unwrap_or_default();
        Self {
            status,
            body: Bytes::from(body),
        }
    }

    fn bad_request(message: impl AsRef<str>) -> Self {
        Self::error(StatusCode::BAD_REQUEST, message)
    }

    fn order_not_found() -> Self {
        Self::error(StatusCode::NOT_FOUND, "order not found")
    }

    fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Waits out a simulated latency; zero means no yield at all (fast tests, load tests).
async fn pause(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// The read model. MVCC on: the answer is computed on arrival, then the latency passes, so
/// a write acknowledged meanwhile is not seen. Off: wait first, answer from the latest state.
/// The lock is never held across the wait.
async fn read_model<T>(
    shared: &Shared,
    latency: impl Fn(&Store) -> Duration,
    snapshot: impl Fn(&Store) -> T,
) -> T {
    if shared.mvcc() {
        let (delay, value) = {
            let store = shared.read();
            (latency(&store), snapshot(&store))
        };
        pause(delay).await;
        value
    } else {
        let delay = latency(&shared.read());
        pause(delay).await;
        snapshot(&shared.read())
    }
}

/// Query of `GET /api/orders`, validated.
#[derive(Debug, PartialEq, Eq)]
struct ListQuery {
    status: Option<Status>,
    page: usize,
    size: usize,
}

impl ListQuery {
    /// Unknown parameters are ignored; for a repeated one the last wins.
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut q = Self {
            status: None,
            page: 1,
            size: DEFAULT_PAGE_SIZE,
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "status" => q.status = Some(parse_status(&value)?),
                "page" => q.page = parse_in_range("page", &value, 1, usize::MAX)?,
                "size" => q.size = parse_in_range("size", &value, 1, MAX_PAGE_SIZE)?,
                _ => {}
            }
        }
        Ok(q)
    }
}

fn parse_status(value: &str) -> Result<Status, String> {
    Status::parse(value).ok_or_else(|| format!("unknown status {value:?}"))
}

fn parse_in_range(name: &str, value: &str, min: usize, max: usize) -> Result<usize, String> {
    parse_digits(value)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| match max {
            usize::MAX => format!("{name} must be an integer >= {min}, got {value:?}"),
            _ => format!("{name} must be an integer in {min}..={max}, got {value:?}"),
        })
}

async fn list(shared: &Shared, query: Option<&str>) -> Reply {
    let q = match ListQuery::parse(query) {
        Ok(q) => q,
        Err(message) => return Reply::bad_request(message),
    };
    let page = read_model(
        shared,
        |store| shared.list_latency(store.matching(q.status)),
        |store| store.page(q.status, q.page, q.size),
    )
    .await;
    Reply::ok(list_body(&page, q.page, q.size))
}

/// `{"items":[…],"page":P,"size":N,"total":T}` spliced from the cached order documents.
fn list_body(page: &Page, number: usize, size: usize) -> Bytes {
    let items_len: usize = page.items.iter().map(Bytes::len).sum();
    let mut out = Vec::with_capacity(items_len + page.items.len() + 64);
    out.extend_from_slice(b"{\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    let tail = format!(
        "],\"page\":{number},\"size\":{size},\"total\":{}}}",
        page.total
    );
    out.extend_from_slice(tail.as_bytes());
    Bytes::from(out)
}

async fn detail(shared: &Shared, id: Option<u64>) -> Reply {
    let Some(id) = id else {
        return Reply::order_not_found();
    };
    let order = read_model(shared, |_| shared.detail_latency, |store| store.get(id)).await;
    order.map_or_else(Reply::order_not_found, Reply::ok)
}

async fn counts(shared: &Shared) -> Reply {
    let counts = read_model(shared, |_| shared.counts_latency, Store::counts).await;
    Reply::ok(counts_body(counts))
}

/// `{"counts":{…every status, lifecycle order…},"total":n}`.
fn counts_body(counts: [usize; 8]) -> Bytes {
    let fields: Vec<String> = Status::ALL
        .iter()
        .zip(counts)
        .map(|(status, n)| format!("\"{}\":{n}", status.as_str()))
        .collect();
    let total: usize = counts.iter().sum();
    Bytes::from(format!(
        "{{\"counts\":{{{}}},\"total\":{total}}}",
        fields.join(",")
    ))
}

/// Collects a request body up to [`MAX_BODY`].
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(Reply::bad_request(format!(
            "could not read request body: {e}"
        ))),
    }
}

/// The body must be a JSON object (not an array, which serde would accept for a struct).
fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| Reply::bad_request(format!("body must be a JSON object: {e}")))?;
    serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| Reply::bad_request(format!("invalid body: {e}")))
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

async fn status_change(shared: &Shared, id: Option<u64>, body: Incoming) -> Reply {
    let Some(id) = id else {
        return Reply::order_not_found();
    };
    let status = match parse_status_body(body).await {
        Ok(status) => status,
        Err(reply) => return reply,
    };
    pause(shared.write_latency).await;
    let result = shared.write().set_status(id, status, data::now_ms());
    match result {
        Ok(order) => Reply::ok(order),
        Err(ChangeError::NotFound) => Reply::order_not_found(),
        Err(ChangeError::Unchanged) => Reply::error(
            StatusCode::CONFLICT,
            format!("order {id} is already {}", status.as_str()),
        ),
    }
}

async fn parse_status_body(body: Incoming) -> Result<Status, Reply> {
    let bytes = read_body(body).await?;
    let StatusBody { status } = parse_object(&bytes)?;
    parse_status(&status).map_err(Reply::bad_request)
}

/// `POST /api/orders` body: every field optional.
#[derive(Debug, Default, Deserialize)]
struct CreateBody {
    customer: Option<String>,
    product: Option<String>,
    material: Option<String>,
    quantity: Option<u32>,
}

impl CreateBody {
    fn into_new_order(self) -> Result<NewOrder, Reply> {
        let quantity = self.quantity.unwrap_or(data::DEFAULT_QUANTITY);
        if quantity == 0 {
            return Err(Reply::bad_request("quantity must be at least 1"));
        }
        Ok(NewOrder {
            customer: self
                .customer
                .unwrap_or_else(|| data::DEFAULT_CUSTOMER.into()),
            product: self.product.unwrap_or_else(|| data::DEFAULT_PRODUCT.into()),
            material: self
                .material
                .unwrap_or_else(|| data::DEFAULT_MATERIAL.into()),
            quantity,
        })
    }
}

async fn create(shared: &Shared, body: Incoming) -> Reply {
    let new = match parse_create_body(body).await {
        Ok(new) => new,
        Err(reply) => return reply,
    };
    pause(shared.write_latency).await;
    let order = shared.write().create(new, data::now_ms());
    Reply {
        status: StatusCode::CREATED,
        body: order,
    }
}

/// An empty body means "all defaults".
async fn parse_create_body(body: Incoming) -> Result<NewOrder, Reply> {
    let bytes = read_body(body).await?;
    let fields = if bytes.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        parse_object(&bytes)?
    };
    fields.into_new_order()
}

#[derive(Deserialize, Serialize)]
pub(super) struct PriceBody {
    model_hash: String,
    material: String,
    quantity: u32,
}

#[derive(Serialize)]
struct PriceReply {
    #[serde(flatten)]
    request: PriceBody,
    price: f64,
}

async fn price(shared: &Shared, body: Incoming) -> Reply {
    let request = match parse_price_body(body).await {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    shared.count_price_run(price_key(&request));
    pause(shared.price_latency()).await;
    let price = data::price(&request.model_hash, &request.material, request.quantity);
    Reply::serialize(&PriceReply { request, price })
}

/// The key a price calculation is counted under: its inputs, `|`-separated.
pub(super) fn price_key(r: &PriceBody) -> String {
    format!("{}|{}|{}", r.model_hash, r.material, r.quantity)
}

async fn parse_price_body(body: Incoming) -> Result<PriceBody, Reply> {
    let bytes = read_body(body).await?;
    let request: PriceBody = parse_object(&bytes)?;
    if request.quantity == 0 {
        return Err(Reply::bad_request("quantity must be at least 1"));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        let get = Method::GET;
        assert_eq!(Route::of(&get, "/api/orders"), Route::List);
        assert_eq!(Route::of(&Method::POST, "/api/orders"), Route::Create);
        assert_eq!(Route::of(&get, "/api/orders/status-counts"), Route::Counts);
        assert_eq!(Route::of(&get, "/api/orders/42"), Route::Detail(Some(42)));
        assert_eq!(Route::of(&get, "/api/orders/+42"), Route::Detail(None));
        assert_eq!(Route::of(&get, "/api/orders/x"), Route::Detail(None));
        assert_eq!(
            Route::of(&Method::PATCH, "/api/orders/7/status"),
            Route::StatusChange(Some(7))
        );
        assert_eq!(
            Route::of(&Method::POST, "/api/price-calculations"),
            Route::Price
        );
        assert_eq!(Route::of(&get, "/__sim/stats"), Route::Stats);
        assert_eq!(
            Route::of(&Method::POST, "/__sim/reset-stats"),
            Route::ResetStats
        );
        for (m, p) in [
            (Method::GET, "/"),
            (Method::GET, "/api/orders/"),
            (Method::DELETE, "/api/orders/1"),
            (Method::GET, "/api/orders/1/status"),
            (Method::GET, "/api/price-calculations"),
            (Method::POST, "/__sim/stats"),
        ] {
            assert_eq!(Route::of(&m, p), Route::Other, "{m} {p}");
        }
        assert_eq!(Route::Stats.kind(), None);
        assert_eq!(Route::Detail(None).kind(), Some(Kind::Detail));
    }

    #[test]
    fn list_query_defaults_and_limits() {
        let q = ListQuery::parse(None).unwrap();
        assert_eq!((q.status, q.page, q.size), (None, 1, 50));
        let q = ListQuery::parse(Some("status=SHIPPED&page=3&size=200&x=y")).unwrap();
        assert_eq!((q.status, q.page, q.size), (Some(Status::Shipped), 3, 200));
        for bad in [
            "status=shipped",
            "status=",
            "page=0",
            "page=-1",
            "page=1.5",
            "page=",
            "page=99999999999999999999999",
            "size=0",
            "size=201",
            "size=abc",
        ] {
            assert!(ListQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_body_splices_items() {
        let page = Page {
            items: vec![
                Bytes::from_static(b"{\"id\":2}"),
                Bytes::from_static(b"{\"id\":1}"),
            ],
            total: 9,
        };
        let v: serde_json::Value = serde_json::from_slice(&list_body(&page, 1, 2)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"items":[{"id":2},{"id":1}],"page":1,"size":2,"total":9})
        );
    }

    #[test]
    fn counts_body_lists_every_status() {
        let v: serde_json::Value =
            serde_json::from_slice(&counts_body([1, 2, 3, 4, 5, 6, 7, 8])).unwrap();
        assert_eq!(v["total"], 36);
        assert_eq!(v["counts"]["CANCELLED"], 8);
        assert_eq!(v["counts"].as_object().map(|o| o.len()), Some(8));
    }

    #[test]
    fn bodies_must_be_objects() {
        assert!(parse_object::<CreateBody>(b"[]").is_err());
        assert!(parse_object::<CreateBody>(b"{").is_err());
        assert!(parse_object::<CreateBody>(b"{\"quantity\":\"x\"}").is_err());
        assert!(parse_object::<CreateBody>(b"{\"quantity\":-1}").is_err());
        assert!(parse_object::<CreateBody>(b"{\"customer\":null,\"x\":1}").is_ok());
        assert!(parse_object::<StatusBody>(b"{}").is_err());
    }
}
